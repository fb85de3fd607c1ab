"""Lineage subgraphs: where an artifact came from and what was built from it.

Edges are `lineage` rows (child, position, parent, parent_digest, parent_version): the parent's
content hash and version at link time, so a child knows exactly which bytes it came from, and
can fetch them as that version of the parent after the parent has been re-uploaded. A walk is
one recursive query per direction (SQLite and PostgreSQL alike), bounded by depth; lineage is
acyclic because a parent must exist before its child. Deleted artifacts stay in the graph as
tombstones.
"""

from __future__ import annotations

from collections.abc import Sequence
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


@dataclass(frozen=True, slots=True)
class Neighbourhood:
    """What a lineage drawing needs: at most `per_level` artifacts in each layer (signed
    distance from the root: -2, -1 ancestors, 1, 2 descendants), the edges among them, and
    which layers have more than were read."""

    root: str
    nodes: list[Node]
    edges: list[Edge]
    layers: dict[str, int]  # each node's layer: the level it was reached at, signed
    more: frozenset[int]  # the layers with more artifacts than `per_level`
    truncated: bool  # more edges lie beyond `depth` from the artifacts read


async def neighbourhood(
    db: Database,
    root: str,
    *,
    depth: int = 2,
    per_level: int = 8,
    tenant: str = DEFAULT_TENANT,
) -> Neighbourhood:
    """The root's ancestors and descendants up to `depth` steps away, at most `per_level` a
    layer: unlike subgraph(), which reads every artifact within `depth`, this reads at most
    per_level + 1 edges from each artifact it keeps (a parent's children newest first by
    ix_lineage_parent_order, a child's parents in their order by the primary key), so an
    artifact with thousands of children costs what one with nine does. Each layer keeps its
    first `per_level` (children of earlier nodes first) and is in `more` when there were
    others. A node's layer is the level at which it was reached: a direct child past the
    first `per_level` that is also a child of a kept one is kept in layer 2, not 1. Nodes are
    loaded for `tenant` only; deleted ones are tombstones, as in subgraph()."""
    l = lineage.c  # noqa: E741

    def read(conn: sa.Connection) -> tuple[dict[str, int], Sequence[Any], set[int], bool, Any]:
        layer: dict[str, int] = {root: 0}
        more: set[int] = set()
        truncated = False
        for sign in (-1, 1):
            upward = sign < 0
            near, far = (l.child_id, l.parent_id) if upward else (l.parent_id, l.child_id)
            order = (l.position,) if upward else (l.child_created_at.desc(), l.child_id.desc())
            frontier = [root]
            for level in range(1, depth + 1):
                found: list[str] = []
                for node in frontier:
                    stmt = sa.select(far).where(near == node).order_by(*order)
                    got = conn.execute(stmt.limit(per_level + 1)).scalars().all()
                    if len(got) > per_level:
                        more.add(sign * level)
                    found += [n for n in got if n not in layer and n not in found]
                if len(found) > per_level:
                    more.add(sign * level)
                frontier = found[:per_level]
                for node in frontier:
                    layer[node] = sign * level
                if not frontier:
                    break
            else:
                if frontier and not truncated:
                    beyond = conn.execute(sa.select(near).where(near.in_(frontier)).limit(1))
                    truncated = beyond.first() is not None
        kept = list(layer)
        edge_rows = conn.execute(
            sa.select(lineage)
            .where(l.child_id.in_(kept), l.parent_id.in_(kept))
            .order_by(l.child_id, l.position)
        ).all()
        found_rows = conn.execute(
            sa.select(artifacts).where(artifacts.c.id.in_(kept), artifacts.c.tenant == tenant)
        )
        return layer, edge_rows, more, truncated, {row.id: row for row in found_rows}

    layer, edge_rows, more, truncated, rows_by_id = await db.run_read(read)
    nodes = [
        Node(
            node,
            abs(signed),
            None
            if node not in rows_by_id or rows_by_id[node].deleted_at is not None
            else row_to_artifact(rows_by_id[node], None),
        )
        for node, signed in layer.items()
    ]
    edges = [Edge(r.parent_id, r.child_id, r.parent_digest, r.parent_version) for r in edge_rows]
    return Neighbourhood(root, nodes, edges, layer, frozenset(more), truncated)


async def live_artifacts(
    db: Database, ids: list[str], *, tenant: str = DEFAULT_TENANT
) -> dict[str, Artifact]:
    """The live artifacts of `tenant` among `ids` (one artifact's parents, at most
    max_derived_from of them), by id; deleted and unknown ones are absent."""
    if not ids:
        return {}
    stmt = sa.select(artifacts).where(
        artifacts.c.id.in_(ids), artifacts.c.tenant == tenant, artifacts.c.deleted_at.is_(None)
    )
    rows = await db.run_read(lambda conn: conn.execute(stmt).all())
    return {row.id: row_to_artifact(row, None) for row in rows}
