"""Lineage (`GET /artifacts/{id}/lineage`, `GET /artifacts?derived_from=`) against a model.

One graph per backend (module scope), built in-process through ArtifactService with a clock
that repeats readings (so the id tiebreak of the node order matters) and seeded random ids:

- a diamond lattice of 6 layers x 3 (every node merges two parents of the layer above; the
  first node of each layer from the third on also has a skip parent two layers up, so shortest
  distances differ from layer numbers, and three parents in a deliberate order),
- a chain c0 -> ... -> c60 with a side branch, and a merge M of the lattice and the chain,
- tombstones: lattice, chain and leaf nodes deleted after their children were built,
- parents whose content is replaced by an HTTP upload between the linking of two children.

The expected subgraph is computed by a BFS over the edges the test created and compared with
the server's answer exactly: nodes (with their shortest `depth`), their order, edges (with the
parent's hash at link time), their order, and `truncated`.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
import pytest

from storage.artifacts import ArtifactService
from storage.blobs import FilesystemBlobStore
from storage.db.engine import Database, sqlite_url
from storage.db.migrate import upgrade
from storage.lineage import Neighbourhood, neighbourhood
from storage.records import Artifact, NewArtifact, us_to_iso
from tests.support.databases import BACKENDS, POSTGRES_URL, create_pg_database, drop_pg_database
from tests.support.inprocess import AppServer, start_app

T0 = 1_800_000_000_000_000
WIDTH = 3
LAYERS = 6
CHAIN = 60  # edges in the chain: c0 .. c60
AMBIGUOUS = ("abcdef01-0000-4000-8000-000000000001", "abcdef01-0000-4000-8000-000000000002")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def iso_to_us(text: str) -> int:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return int(moment.timestamp()) * 1_000_000 + moment.microsecond


class RepeatingClock:
    """Strictly increasing microseconds, except that every reading in REPEAT is given twice or
    three times in a row (several artifacts share one created_at)."""

    PATTERN = (1, 3, 1, 2, 1, 1, 3)

    def __init__(self) -> None:
        self.t = T0
        self.k = 0
        self.left = self.PATTERN[0]

    def __call__(self) -> int:
        if self.left == 0:
            self.k += 1
            self.t += 7 + self.k % 5
            self.left = self.PATTERN[self.k % len(self.PATTERN)]
        self.left -= 1
        return self.t


class Ids:
    """Seeded random uuid4s (so id order is unrelated to creation order), or forced ones."""

    def __init__(self) -> None:
        self.rng = random.Random(20270101)
        self.forced: list[str] = []

    def __call__(self) -> str:
        if self.forced:
            return self.forced.pop(0)
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))


@dataclass
class Node:
    summary: dict[str, Any]
    created_at: int
    deleted: bool = False
    version: int = 1  # one more per upload


@dataclass(frozen=True)
class Link:
    child: str
    position: int
    parent: str
    parent_hash: str
    parent_version: int


@dataclass
class World:
    url: str
    data_dir: Path
    nodes: dict[str, Node] = field(default_factory=dict)
    links: list[Link] = field(default_factory=list)
    names: dict[str, str] = field(default_factory=dict)  # name -> id

    def __getitem__(self, name: str) -> str:
        return self.names[name]

    def add(self, name: str, summary: dict[str, Any], parents: list[str]) -> str:
        artifact_id = summary["id"]
        self.names[name] = artifact_id
        self.nodes[artifact_id] = Node(summary, iso_to_us(summary["created_at"]))
        for position, parent in enumerate(parents):
            # the parent's hash as the model knows it now, i.e. at link time
            parent_hash = self.nodes[parent].summary["content_hash"]
            version = self.nodes[parent].version
            self.links.append(Link(artifact_id, position, parent, parent_hash, version))
        return artifact_id

    def live(self) -> list[str]:
        return [i for i, n in self.nodes.items() if not n.deleted]

    def children(self, parent: str) -> list[str]:
        """Direct live children, newest first (created_at DESC, id DESC), each once."""
        found = {link.child for link in self.links if link.parent == parent}
        alive = [c for c in found if not self.nodes[c].deleted]
        return sorted(alive, key=lambda c: (self.nodes[c].created_at, c), reverse=True)

    def expected(self, root: str, direction: str, depth: int) -> dict[str, Any]:
        """The subgraph by BFS: shortest depths, the edges leaving every node nearer than
        `depth`, and truncated iff a node exactly `depth` away has an edge further out."""
        distance = {root: 0}
        chosen: set[Link] = set()
        truncated = False
        for upward in (True, False):
            if direction == ("down" if upward else "up"):
                continue
            seen = {root: 0}
            queue = deque([root])
            while queue:
                here = queue.popleft()
                out = [
                    link for link in self.links if (link.child if upward else link.parent) == here
                ]
                if seen[here] == depth:
                    truncated = truncated or bool(out)
                    continue
                for link in out:
                    chosen.add(link)
                    there = link.parent if upward else link.child
                    if there not in seen:
                        seen[there] = seen[here] + 1
                        queue.append(there)
            for node, d in seen.items():
                distance[node] = min(d, distance.get(node, d))

        def body(node: str) -> dict[str, Any]:
            if self.nodes[node].deleted:
                return {"id": node, "deleted": True, "depth": distance[node]}
            return {**self.nodes[node].summary, "deleted": False, "depth": distance[node]}

        # the order the API uses: by depth; within a depth newest first, then by id; tombstones
        # (which show no created_at) after the live nodes of their depth, by id
        def order(node: str) -> tuple[int, int, str]:
            n = self.nodes[node]
            return (distance[node], 0 if n.deleted else -n.created_at, node)

        return {
            "root": root,
            "nodes": [body(n) for n in sorted(distance, key=order)],
            "edges": [
                {
                    "parent": e.parent,
                    "child": e.child,
                    "parent_hash": e.parent_hash,
                    "parent_version": e.parent_version,
                }
                for e in sorted(chosen, key=lambda e: (e.child, e.position))
            ],
            "truncated": truncated,
        }


def summary_of(a: Artifact) -> dict[str, Any]:
    return {
        "id": a.id,
        "workflow_id": a.workflow_id,
        "phase_id": a.phase_id,
        "artifact_type": a.artifact_type,
        "title": a.title,
        "size_bytes": a.size_bytes,
        "created_at": us_to_iso(a.created_at),
        "session_id": a.session_id,
        "content_type": a.content_type,
        "content_hash": a.content_hash,
        "is_primary_deliverable": a.is_primary_deliverable,
    }


def lattice_parents(k: int, j: int) -> list[tuple[int, int]]:
    if k == 0:
        return []
    if j == 0 and k >= 2:  # three parents, the skip one in the middle
        return [(k - 1, 1), (k - 2, 2), (k - 1, 0)]
    return [(k - 1, j), (k - 1, (j + 1) % WIDTH)]


async def build(world: World) -> None:
    ids = Ids()
    db = Database(world.url)
    service = ArtifactService(
        db, FilesystemBlobStore(world.data_dir / "blobs"), clock=RepeatingClock(), new_id=ids
    )

    async def make(name: str, parents: list[str], **kw: Any) -> str:
        content = f"{name} content".encode()
        new = NewArtifact(
            workflow_id=kw.pop("workflow_id", "wf-lineage"),
            artifact_type=kw.pop("artifact_type", "markdown"),
            title=f"node {name}",
            content_type="text/markdown",
            derived_from=tuple(parents),
            **kw,
        )
        a = await service.create(new, content)
        assert a.content_hash == sha(content) and a.size_bytes == len(content)
        return world.add(name, summary_of(a), parents)

    try:
        for k in range(LAYERS):
            for j in range(WIDTH):
                parents = [world[f"L{pk}.{pj}"] for pk, pj in lattice_parents(k, j)]
                await make(f"L{k}.{j}", parents, phase_id=f"layer{k}", session_id=f"s{j}")
        await make("c0", [], workflow_id="wf-chain")
        for i in range(1, CHAIN + 1):
            await make(f"c{i}", [world[f"c{i - 1}"]], workflow_id="wf-chain")
        await make("s1", [world["c20"]], workflow_id="wf-chain")
        await make("s2", [world["s1"]], workflow_id="wf-chain")
        await make("M", [world["c3"], world["L5.2"], world["L0.0"]], is_primary_deliverable=True)
        await make("G", [world["M"]])
        # a parent whose content will be replaced over HTTP, with its first child
        await make("P", [], workflow_id="wf-hash")
        await make("K1", [world["P"]], workflow_id="wf-hash")
        ids.forced = list(AMBIGUOUS)
        await make("A1", [], workflow_id="wf-ambiguous")
        await make("A2", [], workflow_id="wf-ambiguous")
        # tombstones, deleted after their children exist
        for name in ("L0.1", "L2.1", "L4.2", "L5.1", "c30", "c45", "G"):
            await service.delete(world[name])
            world.nodes[world[name]].deleted = True
    finally:
        await db.dispose()


def create_over_http(http: httpx.Client, world: World, name: str, parents: list[str]) -> str:
    body = {
        "workflow_id": "wf-hash",
        "artifact_type": "text",
        "title": f"node {name}",
        "content": f"{name} over http",
        "content_type": "text/plain",
        "derived_from": parents,
    }
    response = http.post("/artifacts", json=body)
    assert response.status_code == 201, response.text
    created = response.json()
    summary = {
        "id": created["id"],
        "workflow_id": "wf-hash",
        "phase_id": None,
        "artifact_type": "text",
        "title": f"node {name}",
        "size_bytes": len(f"{name} over http"),
        "created_at": created["created_at"],
        "session_id": None,
        "content_type": "text/plain",
        "content_hash": sha(f"{name} over http".encode()),
        "is_primary_deliverable": False,
    }
    assert created["content_hash"] == summary["content_hash"]
    return world.add(name, summary, parents)


def upload(http: httpx.Client, world: World, name: str, data: bytes) -> None:
    response = http.post(
        f"/artifacts/{world[name]}/upload",
        content=data,
        headers={"content-type": "application/octet-stream"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["content_hash"] == sha(data)
    world.nodes[world[name]].summary.update(
        content_hash=sha(data), size_bytes=len(data), content_type="application/octet-stream"
    )
    world.nodes[world[name]].version += 1


@dataclass
class Env:
    world: World
    server: AppServer


@pytest.fixture(scope="module", params=BACKENDS)
def env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("lineage")
    if request.param == "sqlite":
        url = sqlite_url(tmp / "artifacts.db")
    else:
        assert POSTGRES_URL
        url = create_pg_database(POSTGRES_URL)
    try:
        upgrade(url)
        world = World(url, tmp / "data")
        asyncio.run(build(world))
        server = start_app(world.data_dir, database_url=url)
        try:
            with server.client() as http:
                # K1 linked P's first bytes; then P's content is replaced twice by uploads,
                # with K2 linked in between (K2 also merges K1), and K3 after the second.
                upload(http, world, "P", b"second version of P")
                create_over_http(http, world, "K2", [world["P"], world["K1"]])
                upload(http, world, "P", b"third version of P, longer")
                create_over_http(http, world, "K3", [world["K2"], world["P"]])
            yield Env(world, server)
        finally:
            server.stop()
    finally:
        if request.param != "sqlite":
            drop_pg_database(POSTGRES_URL, url)


@pytest.fixture
def http(env: Env) -> Iterator[httpx.Client]:
    with env.server.client() as c:
        yield c


def lineage(http: httpx.Client, root: str, prefix: str = "/artifacts", **params: Any) -> Any:
    response = http.get(f"{prefix}/{root}/lineage", params=params)
    assert response.status_code == 200, (root, params, response.text)
    return response.json()


# -- the graph is what the tests need ---------------------------------------------------------


def test_the_graph_exercises_what_it_should(env: Env) -> None:
    w = env.world
    created = [n.created_at for n in w.nodes.values()]
    assert len(created) - len(set(created)) >= 30  # many shared created_at readings
    assert len(w.nodes) == LAYERS * WIDTH + (CHAIN + 1) + 10
    assert sum(n.deleted for n in w.nodes.values()) == 7
    # skip edges make shortest distances shorter than layer differences: L5.0 reaches the
    # first layer in 3 or 4 steps, not 5
    up = w.expected(w["L5.0"], "up", 50)["nodes"]
    assert {n["depth"] for n in up} == {0, 1, 2, 3, 4}
    assert {n["id"]: n["depth"] for n in up if n["id"] in {w["L0.0"], w["L0.2"]}} == {
        w["L0.0"]: 4,
        w["L0.2"]: 3,
    }


# -- exact subgraphs --------------------------------------------------------------------------


def test_lattice_every_root_direction_and_depth(env: Env, http: httpx.Client) -> None:
    w = env.world
    roots = [w[f"L{k}.{j}"] for k in range(LAYERS) for j in range(WIDTH)]
    roots = [r for r in roots if not w.nodes[r].deleted]
    assert len(roots) == LAYERS * WIDTH - 4
    outcomes = set()
    ties = 0
    for root in roots:
        for direction in ("up", "down", "both"):
            for depth in range(1, LAYERS + 2):
                expected = w.expected(root, direction, depth)
                assert lineage(http, root, direction=direction, depth=depth) == expected, (
                    root,
                    direction,
                    depth,
                )
                tombstones = sum(n["deleted"] for n in expected["nodes"])
                outcomes.add((expected["truncated"], tombstones > 0))
                live = [n for n in expected["nodes"] if not n["deleted"]]
                ties += sum(
                    (a["depth"], a["created_at"]) == (b["depth"], b["created_at"])
                    for a, b in pairwise(live)
                )
    assert outcomes == {(True, True), (True, False), (False, True), (False, False)}
    assert ties >= 20  # nodes of one depth and one created_at: ordered by id


def test_defaults_are_both_and_depth_1(env: Env, http: httpx.Client) -> None:
    w = env.world
    for name in ("L3.0", "L1.2", "c10", "M", "K2"):
        expected = w.expected(w[name], "both", 1)
        assert lineage(http, w[name]) == expected
        assert lineage(http, w[name], "/api/v1/artifacts") == expected
    # L3.0: its three parents, in their positions, then its two live children
    body = lineage(http, w["L3.0"])
    assert [e["parent"] for e in body["edges"] if e["child"] == w["L3.0"]] == [
        w["L2.1"],
        w["L1.2"],
        w["L2.0"],
    ]
    assert body["nodes"][0] == {**w.nodes[w["L3.0"]].summary, "deleted": False, "depth": 0}
    assert {n["id"] for n in body["nodes"]} == {
        w[n] for n in ("L3.0", "L2.1", "L1.2", "L2.0", "L4.0", "L4.2")
    }
    # the two tombstones close depth 1 (they have no created_at), by id
    tombstones = sorted([w["L2.1"], w["L4.2"]])
    assert body["nodes"][-2:] == [{"id": t, "deleted": True, "depth": 1} for t in tombstones]
    assert body["truncated"] is True


def test_chain_of_60(env: Env, http: httpx.Client) -> None:
    w = env.world
    c = [w[f"c{i}"] for i in range(CHAIN + 1)]
    side = [w["s1"], w["s2"]]
    checks = [
        # (root, direction, depth, node ids, truncated)
        (60, "up", 50, c[10:], True),
        (60, "up", 49, c[11:], True),
        (50, "up", 50, c[:51], False),  # c0 is exactly 50 steps up: nothing beyond
        (49, "up", 50, c[:50], False),
        (0, "down", 50, [*c[:51], *side, w["M"], w["G"]], True),
        (10, "down", 50, [*c[10:], *side], False),  # c60 exactly 50 steps down
        (9, "down", 50, [*c[9:60], *side], True),
        (29, "both", 31, c, False),  # not s1 nor M: other children of ancestors
        (31, "both", 30, c[1:], True),
    ]
    for i, direction, depth, ids, truncated in checks:
        body = lineage(http, c[i], direction=direction, depth=depth)
        assert body == w.expected(c[i], direction, depth), (i, direction, depth)
        assert sorted(n["id"] for n in body["nodes"]) == sorted(ids), (i, direction, depth)
        assert body["truncated"] is truncated, (i, direction, depth)
        assert len(body["edges"]) == len(ids) - 1
    # the two chain tombstones stay in place, and the walk goes through them
    body = lineage(http, c[60], direction="up", depth=50)
    by_id = {n["id"]: n for n in body["nodes"]}
    assert by_id[c[30]] == {"id": c[30], "deleted": True, "depth": 30}
    assert by_id[c[45]] == {"id": c[45], "deleted": True, "depth": 15}
    assert by_id[c[10]]["depth"] == 50 and by_id[c[10]]["deleted"] is False
    assert [n["depth"] for n in body["nodes"]] == list(range(51))


def test_merge_keeps_its_parents_order(env: Env, http: httpx.Client) -> None:
    w = env.world
    merge = w["M"]
    parents = [w["c3"], w["L5.2"], w["L0.0"]]
    # the positions are neither the id order nor the creation order
    assert sorted(parents) != parents != sorted(parents, reverse=True)
    body = lineage(http, merge, direction="up", depth=1)
    hashes = [w.nodes[p].summary["content_hash"] for p in parents]
    assert body["edges"] == [
        {"parent": p, "child": merge, "parent_hash": h, "parent_version": w.nodes[p].version}
        for p, h in zip(parents, hashes, strict=True)
    ]
    assert body["nodes"][0]["id"] == merge
    assert body == w.expected(merge, "up", 1)
    record = http.get(f"/artifacts/{merge}").json()
    assert record["derived_from"] == parents
    # the deleted child G is a tombstone below M
    down = lineage(http, merge, direction="down", depth=3)
    assert down == {
        "root": merge,
        "nodes": [
            {**w.nodes[merge].summary, "deleted": False, "depth": 0},
            {"id": w["G"], "deleted": True, "depth": 1},
        ],
        "edges": [
            {
                "parent": merge,
                "child": w["G"],
                "parent_hash": w.nodes[merge].summary["content_hash"],
                "parent_version": 1,
            }
        ],
        "truncated": False,
    }
    # up through the lattice and the chain at once
    for depth in (2, 3, 6, 7, 50):
        assert lineage(http, merge, direction="up", depth=depth) == w.expected(merge, "up", depth)


def test_parent_hash_is_the_parents_hash_at_link_time(env: Env, http: httpx.Client) -> None:
    w = env.world
    p, k1, k2, k3 = (w[n] for n in ("P", "K1", "K2", "K3"))
    first = sha(b"P content")
    second = sha(b"second version of P")
    third = sha(b"third version of P, longer")
    k1_hash = sha(b"K1 content")
    k2_hash = sha(b"K2 over http")
    body = lineage(http, p, direction="down", depth=2)
    links = [  # (child, position, parent, parent_hash, parent_version)
        (k1, 0, p, first, 1),
        (k2, 0, p, second, 2),
        (k2, 1, k1, k1_hash, 1),
        (k3, 0, k2, k2_hash, 1),
        (k3, 1, p, third, 3),
    ]
    assert body["edges"] == [
        {"parent": parent, "child": child, "parent_hash": h, "parent_version": v}
        for child, _, parent, h, v in sorted(links, key=lambda link: link[:2])
    ]
    assert body["truncated"] is False
    root = body["nodes"][0]
    assert root["id"] == p and root["content_hash"] == third
    assert root["size_bytes"] == len(b"third version of P, longer")
    assert root["content_type"] == "application/octet-stream"
    assert body == w.expected(p, "down", 2)
    # from below, the same edges keep the old hashes while the node shows the current one
    up = lineage(http, k3, direction="up", depth=3)
    assert up == w.expected(k3, "up", 3)
    assert up["truncated"] is False
    assert [n["content_hash"] for n in up["nodes"] if n["id"] == p] == [third]
    assert {e["parent_hash"] for e in up["edges"] if e["parent"] == p} == {first, second, third}


# -- the root ---------------------------------------------------------------------------------


def test_root_by_prefix_and_unknown_roots(env: Env, http: httpx.Client) -> None:
    w = env.world
    root = w["L2.0"]
    expected = w.expected(root, "both", 2)
    for ref in (root[:8], root[:13], root[:20], root.upper()):
        assert lineage(http, ref, direction="both", depth=2) == expected, ref
    assert lineage(http, root[:8], "/api/v1/artifacts", depth=2) == expected

    def problem(ref: str, status: int, code: str, detail: str) -> None:
        for prefix in ("/artifacts", "/api/v1/artifacts"):
            response = http.get(f"{prefix}/{ref}/lineage", params={"depth": 3})
            assert response.status_code == status, (ref, response.text)
            assert response.json() == {"detail": detail, "code": code}

    for name in ("L2.1", "c30", "G"):  # deleted: gone as a root, by id or by prefix
        gone = w[name]
        problem(gone, 404, "artifact_not_found", f"Artifact {gone!r} was not found.")
        problem(gone[:9], 404, "artifact_not_found", f"Artifact {gone[:9]!r} was not found.")
    unknown = "00000000-0000-4000-8000-000000000000"
    problem(unknown, 404, "artifact_not_found", f"Artifact {unknown!r} was not found.")
    too_short = (
        f"The artifact id {root[:7]!r} is too short: give the full id or a unique prefix of at "
        "least 8 characters."
    )
    problem(root[:7], 404, "artifact_not_found", too_short)
    problem("not-an-id", 404, "artifact_not_found", "Artifact 'not-an-id' was not found.")
    both = ", ".join(AMBIGUOUS)
    detail = f"The id prefix 'abcdef01' matches 2 artifacts ({both}); give more characters."
    problem("abcdef01", 409, "ambiguous_artifact_id", detail)
    longest = AMBIGUOUS[1][:35]  # still shared by both
    detail = f"The id prefix {longest!r} matches 2 artifacts ({both}); give more characters."
    problem(longest, 409, "ambiguous_artifact_id", detail)
    for full in AMBIGUOUS:
        assert lineage(http, full) == w.expected(full, "both", 1)


# -- bad input: FastAPI's 422, byte for byte ---------------------------------------------------

BAD = [
    (
        {"depth": "0"},
        '{"detail":[{"type":"greater_than_equal","loc":["query","depth"],'
        '"msg":"Input should be greater than or equal to 1","input":"0","ctx":{"ge":1}}]}',
    ),
    (
        {"depth": "51"},
        '{"detail":[{"type":"less_than_equal","loc":["query","depth"],'
        '"msg":"Input should be less than or equal to 50","input":"51","ctx":{"le":50}}]}',
    ),
    (
        {"depth": "abc"},
        '{"detail":[{"type":"int_parsing","loc":["query","depth"],'
        '"msg":"Input should be a valid integer, unable to parse string as an integer",'
        '"input":"abc"}]}',
    ),
    (
        {"direction": "sideways"},
        '{"detail":[{"type":"literal_error","loc":["query","direction"],'
        '"msg":"Input should be \'up\', \'down\' or \'both\'","input":"sideways",'
        "\"ctx\":{\"expected\":\"'up', 'down' or 'both'\"}}]}",
    ),
    (
        {"direction": "UP", "depth": "-1"},
        '{"detail":[{"type":"literal_error","loc":["query","direction"],'
        '"msg":"Input should be \'up\', \'down\' or \'both\'","input":"UP",'
        "\"ctx\":{\"expected\":\"'up', 'down' or 'both'\"}},"
        '{"type":"greater_than_equal","loc":["query","depth"],'
        '"msg":"Input should be greater than or equal to 1","input":"-1","ctx":{"ge":1}}]}',
    ),
]


def test_bad_depth_and_direction_are_422(env: Env, http: httpx.Client) -> None:
    w = env.world
    # a live root, a deleted one and an unknown one: the input is checked first
    for ref in (w["L1.1"], w["c30"], "00000000-0000-4000-8000-000000000000"):
        for prefix in ("/artifacts", "/api/v1/artifacts"):
            for params, text in BAD:
                response = http.get(f"{prefix}/{ref}/lineage", params=params)
                assert response.status_code == 422, (params, response.text)
                assert response.headers["content-type"] == "application/json"
                assert response.text == text, params
    for depth in ("1.5", "", "1e1", "0x10"):
        response = http.get(f"/artifacts/{w['L1.1']}/lineage", params={"depth": depth})
        assert response.status_code == 422, depth
    # the bounds themselves are fine
    for depth in (1, 50):
        assert lineage(http, w["L1.1"], depth=depth) == w.expected(w["L1.1"], "both", depth)


# -- derived_from on the list -----------------------------------------------------------------


def test_derived_from_lists_the_direct_live_children_newest_first(
    env: Env, http: httpx.Client
) -> None:
    w = env.world
    parents = [w[n] for n in ("L0.0", "L1.1", "L2.1", "L4.0", "c29", "c44", "c20", "P", "K1", "M")]
    parents += [w[n] for n in ("L5.0", "c60", "G")]  # no live children
    sizes = set()
    for parent in parents:
        expected = [w.nodes[c].summary for c in w.children(parent)]
        sizes.add(len(expected))
        for prefix in ("/artifacts", "/api/v1/artifacts"):
            response = http.get(prefix, params={"derived_from": parent, "limit": 200})
            assert response.status_code == 200
            assert response.json() == expected, parent
            assert "x-next-cursor" not in response.headers
        # one at a time, by the cursor
        walked: list[dict[str, Any]] = []
        params: dict[str, Any] = {"derived_from": parent, "limit": 1}
        while True:
            response = http.get("/artifacts", params=params)
            walked += response.json()
            if "x-next-cursor" not in response.headers:
                break
            params["cursor"] = response.headers["x-next-cursor"]
        assert walked == expected, parent
    assert sizes == {0, 1, 2, 3}
    # children of a deleted parent are still its children; a deleted child is not listed
    assert w.nodes[w["L2.1"]].deleted and len(w.children(w["L2.1"])) == 2
    assert w.children(w["M"]) == []
    # with other filters, applied before the limit
    both = {"derived_from": w["P"], "workflow_id": "wf-hash", "artifact_type": "text"}
    assert [a["id"] for a in http.get("/artifacts", params=both).json()] == [w["K3"], w["K2"]]
    other = {"derived_from": w["P"], "workflow_id": "wf-lineage"}
    assert http.get("/artifacts", params=other).json() == []
    # a prefix or an unknown id is not a parent
    assert http.get("/artifacts", params={"derived_from": w["P"][:8]}).json() == []
    unknown = {"derived_from": "00000000-0000-4000-8000-000000000000"}
    assert http.get("/artifacts", params=unknown).json() == []


# -- the web UI's bounded neighbourhood -------------------------------------------------------


def _neighbourhoods(url: str, roots: list[str], per_level: int) -> list[Neighbourhood]:
    async def run() -> list[Neighbourhood]:
        db = Database(url)
        try:
            return [await neighbourhood(db, r, depth=2, per_level=per_level) for r in roots]
        finally:
            await db.dispose()

    return asyncio.run(run())


def test_neighbourhood_is_the_subgraph_when_nothing_is_cut(env: Env) -> None:
    """With room for every node, the UI's per-level walk reaches exactly the nodes the model's
    BFS does (two steps up and down), at the same depths, with every edge of the subgraph
    among them, and says the same about what lies further."""
    w = env.world
    roots = list(w.nodes)
    for root, got in zip(roots, _neighbourhoods(w.url, roots, 1000), strict=True):
        want = w.expected(root, "both", 2)
        assert {n.id: n.depth for n in got.nodes} == {n["id"]: n["depth"] for n in want["nodes"]}
        assert {n.id for n in got.nodes if n.artifact is None} == {
            n["id"] for n in want["nodes"] if n["deleted"]
        }
        edges = {(e.parent, e.child, e.parent_hash) for e in got.edges}
        assert {(e["parent"], e["child"], e["parent_hash"]) for e in want["edges"]} <= edges
        assert got.more == frozenset() and got.truncated == want["truncated"], root


def test_neighbourhood_keeps_per_level_a_layer_and_says_more(env: Env) -> None:
    """One a layer: parents in their order, children newest first; a layer is in `more`
    exactly when it had others. (A direct child past the first may come back as a child of
    the kept one: it is then kept in layer 2, where it was reached.)"""
    w = env.world
    roots = list(w.nodes)
    for root, got in zip(roots, _neighbourhoods(w.url, roots, 1), strict=True):
        full = w.expected(root, "both", 2)
        parents = [link.parent for link in sorted(
            (x for x in w.links if x.child == root), key=lambda x: x.position)]  # fmt: skip
        children = [link.child for link in w.links if link.parent == root]
        up = [n for n, layer in got.layers.items() if layer == -1]
        down = [n for n, layer in got.layers.items() if layer == 1]
        assert set(up) <= set(parents) and set(down) <= set(children)
        if children:  # the newest child (ties: the greatest id), as the index gives them
            newest = max(children, key=lambda c: (w.nodes[c].created_at, c))
            assert down == [newest]
        assert len(up) <= 1 and len(down) <= 1
        if parents:
            assert up == [parents[0]]
        assert (-1 in got.more) == (len(set(parents)) > 1)
        assert (1 in got.more) == (len(set(children)) > 1)
        assert len(got.nodes) <= 5 and len(got.nodes) <= len(full["nodes"])
