"""The persistence core: blobs, metadata, and the one ArtifactService. Knows nothing of HTTP."""
