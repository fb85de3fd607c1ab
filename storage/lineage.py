"""Lineage subgraphs: where an artifact came from and what was built from it.

Edges are `lineage` rows (child, position, parent, parent_digest, parent_version): the parent's
content hash and version at link time, so a child knows exactly which bytes it came from, and
can fetch them as that version of the parent after the parent has been re-uploaded. A walk is
one recursive query per direction (SQLite and PostgreSQL alike), bounded by depth; lineage is
acyclic because a parent must exist before its child. Deleted artifacts stay in the graph as
tombstones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import sqlalchemy as sa

from storage.db.engine import Database
from storage.db.tables import DEFAULT_TENANT, ID, artifacts, lineage
from storage.records import Artifact, row_to_artifact

Direction = Literal["up", "down", "both"]


@dataclass(frozen=True, slots=True)
class Edge:
    parent: str
    child: str
    parent_hash: str
    # the parent's version at link time, whose bytes parent_hash names (None: linked before
    # versions existed, to content replaced since; parent_hash still pins the bytes)
    parent_version: int | None = None


@dataclass(frozen=True, slots=True)
class Node:
    id: str
    depth: int  # steps from the root (the shorter way when there are several)
    artifact: Artifact | None  # None: a tombstone (deleted)


@dataclass(frozen=True, slots=True)
class Subgraph:
    root: str
    nodes: list[Node]
    edges: list[Edge]
    truncated: bool  # more edges lie beyond `depth`


def _walk(root: str, depth: int, upward: bool) -> sa.CTE:
    """(id, depth) of every artifact within `depth` steps of root, one way."""
    near, far = (
        (lineage.c.child_id, lineage.c.parent_id)
        if upward
        else (
            lineage.c.parent_id,
            lineage.c.child_id,
        )
    )
    name = "walk_up" if upward else "walk_down"
    start = sa.select(
        sa.cast(sa.literal(root), ID).label("id"), sa.literal(0, sa.Integer).label("depth")
    ).cte(name, recursive=True)
    step = (
        sa.select(far.label("id"), (start.c.depth + 1).label("depth"))
        .join(start, near == start.c.id)
        .where(start.c.depth < depth)
    )
    return start.union(step)


async def subgraph(
    db: Database, root: str, direction: Direction, depth: int, *, tenant: str = DEFAULT_TENANT
) -> Subgraph:
    """The ancestors (up), descendants (down) or both of `root`, up to `depth` steps away.
    Edges only ever join artifacts of one tenant (a parent must be the creator's own), and the
    nodes are loaded for `tenant` only, so nothing of another tenant can appear."""

    def read(conn: sa.Connection) -> tuple[dict[str, int], dict[tuple[str, int], Edge], bool, Any]:
        depths: dict[str, int] = {root: 0}
        edges: dict[tuple[str, int], Edge] = {}
        truncated = False
        for upward in (True, False):
            if direction == ("down" if upward else "up"):
                continue
            walk = _walk(root, depth, upward)
            rows = conn.execute(sa.select(walk.c.id, sa.func.min(walk.c.depth)).group_by(walk.c.id))
            reached = {row[0]: int(row[1]) for row in rows}
            for node, d in reached.items():
                depths[node] = min(d, depths.get(node, d))
            near = lineage.c.child_id if upward else lineage.c.parent_id
            inner = [n for n, d in reached.items() if d < depth]
            edge_rows = conn.execute(
                sa.select(lineage).where(near.in_(inner))
                if inner
                else sa.select(lineage).where(sa.false())
            )
            for r in edge_rows:
                edges[(r.child_id, r.position)] = Edge(
                    r.parent_id, r.child_id, r.parent_digest, r.parent_version
                )
            rim = [n for n, d in reached.items() if d == depth]
            if rim and not truncated:
                beyond = conn.execute(sa.select(near).where(near.in_(rim)).limit(1))
                truncated = beyond.first() is not None
        found = conn.execute(
            sa.select(artifacts).where(
                artifacts.c.id.in_(list(depths)), artifacts.c.tenant == tenant
            )
        )
        return depths, edges, truncated, {row.id: row for row in found}

    depths, edges, truncated, rows_by_id = await db.run_read(read)
    nodes = [
        Node(
            node,
            d,
            None
            if node not in rows_by_id or rows_by_id[node].deleted_at is not None
            else row_to_artifact(rows_by_id[node], None),
        )
        for node, d in depths.items()
    ]
    nodes.sort(key=lambda n: (n.depth, -(n.artifact.created_at if n.artifact else 0), n.id))
    ordered = sorted(edges.items(), key=lambda item: item[0])
    return Subgraph(root, nodes, [edge for _, edge in ordered], truncated)
