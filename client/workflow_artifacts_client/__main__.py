"""`python -m workflow_artifacts_client`: the `wfa` command."""

from workflow_artifacts_client.cli import main

main()
