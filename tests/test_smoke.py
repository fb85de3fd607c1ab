import hashlib


def test_create_then_read(client):
    r = client.post(
        "/artifacts",
        json={"workflow_id": "w", "artifact_type": "text", "title": "t", "content": "héllo"},
    )
    assert r.status_code == 201, r.text
    got = client.get(f"/artifacts/{r.json()['id']}").json()
    assert got["content"] == "héllo"
    assert got["content_hash"] == hashlib.sha256("héllo".encode()).hexdigest()
