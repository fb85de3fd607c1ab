"""What the pages show of an artifact's bytes, and how: markdown rendered then sanitised, JSON
pretty-printed, other text as preformatted text, images inline, anything else as a download
link. Plus the small formatting helpers and the lineage graph's layout.

Markdown goes through markdown-it-py with raw HTML off (so `<script>` in a document is text),
then through nh3 (the Rust `ammonia` sanitiser) with a short list of tags and attributes, no
`style`, no images (the page's own CSP would block remote ones anyway) and links limited to
http, https and mailto. Everything else reaches the page through Jinja2's autoescaping.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import nh3
from markdown_it import MarkdownIt
from markupsafe import Markup

from storage.lineage import Neighbourhood, Subgraph
from storage.records import Artifact, is_textual

Kind = Literal["markdown", "json", "text", "image", "binary"]

# Raster formats a browser shows in <img>; SVG too: an <img> never runs an SVG's scripts, and
# the bytes come from the download route (attachment, nosniff, CSP sandbox), so opening the
# image's URL directly runs nothing either.
IMAGE_TYPES = frozenset(
    {"image/png", "image/jpeg", "image/gif", "image/webp", "image/avif", "image/bmp",
     "image/svg+xml"}
)  # fmt: skip
MARKDOWN_TYPES = frozenset({"text/markdown", "text/x-markdown"})
# Text larger than this is offered as a download instead of being put in the page.
MAX_SHOWN_TEXT = 1 << 20

_md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False}).enable(
    ["table", "strikethrough"]
)
_TAGS = {
    "a", "abbr", "b", "blockquote", "br", "code", "dd", "del", "details", "dl", "dt", "em",
    "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i", "kbd", "li", "ol", "p", "pre", "s", "strong",
    "sub", "summary", "sup", "table", "tbody", "td", "th", "thead", "tr", "ul",
}  # fmt: skip
_ATTRIBUTES = {"a": {"href", "title"}, "ol": {"start"}, "th": {"align"}, "td": {"align"}}


def media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def kind_of(artifact: Artifact) -> Kind:
    media = media_type(artifact.content_type)
    if media in IMAGE_TYPES:
        return "image"
    if not (artifact.is_text or is_textual(media)):
        return "binary"
    if media in MARKDOWN_TYPES:
        return "markdown"
    if media == "application/json" or media.endswith("+json"):
        return "json"
    return "text"


def markdown_html(text: str) -> Markup:
    """The document as sanitised HTML, safe to put in the page as it is."""
    rendered = _md.render(text)
    clean = nh3.clean(
        rendered,
        tags=_TAGS,
        attributes=_ATTRIBUTES,
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer nofollow",
        strip_comments=True,
    )
    return Markup(clean)  # noqa: S704 (sanitised by nh3 just above)


def pretty_json(text: str) -> str:
    """Indented JSON, or the text as it is when it does not parse."""
    try:
        return json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    except ValueError:
        return text


def pretty_json_value(value: object) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False)


def size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


def when(us: int | None) -> str:
    """Microseconds since the epoch as `2026-11-22 05:06:15 UTC`."""
    if us is None:
        return ""
    moment = datetime.fromtimestamp(us / 1e6, UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def iso(us: int | None) -> str:
    if us is None:
        return ""
    return datetime.fromtimestamp(us / 1e6, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- the lineage graph ---------------------------------------------------------------------------

NODE_W, NODE_H, GAP_X, GAP_Y, PAD = 190, 46, 24, 44, 12
MAX_PER_LAYER = 8


@dataclass(frozen=True, slots=True)
class GraphNode:
    id: str
    title: str
    type: str
    layer: int  # -2, -1 ancestors; 0 the artifact; 1, 2 descendants
    x: int
    y: int
    root: bool
    deleted: bool

    @property
    def cx(self) -> int:
        return self.x + NODE_W // 2


@dataclass(frozen=True, slots=True)
class GraphEdge:
    x1: int
    y1: int
    x2: int
    y2: int


@dataclass(frozen=True, slots=True)
class Graph:
    width: int
    height: int
    nodes: list[GraphNode]
    edges: list[GraphEdge]
    hidden: int  # nodes left out (more than MAX_PER_LAYER in a layer)
    truncated: bool
    more: tuple[int, ...] = ()  # layers with more artifacts than drawn (-2, -1, 1, 2)


def _short(text: str, limit: int = 26) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def lineage_graph(graph: Subgraph | Neighbourhood) -> Graph:
    """Layers by signed distance from the root (parents above, children below), at most
    MAX_PER_LAYER nodes a layer, laid out left to right in the subgraph's own order."""
    parents_of: dict[str, set[str]] = {}
    children_of: dict[str, set[str]] = {}
    for e in graph.edges:
        parents_of.setdefault(e.child, set()).add(e.parent)
        children_of.setdefault(e.parent, set()).add(e.child)
    layer: dict[str, int] = {graph.root: 0}
    if isinstance(graph, Neighbourhood):  # it says where each node was reached
        layer = dict(graph.layers)
    for step, links in ((-1, parents_of), (1, children_of)):
        frontier = [graph.root]
        for depth in (1, 2):
            nxt = []
            for current in frontier:
                for other in sorted(links.get(current, ())):
                    if other not in layer:
                        layer[other] = step * depth
                        nxt.append(other)
            frontier = nxt
    by_id = {n.id: n for n in graph.nodes}
    layers: dict[int, list[str]] = {}
    for node in graph.nodes:
        if node.id in layer:
            layers.setdefault(layer[node.id], []).append(node.id)
    more = {key for key, ids in layers.items() if len(ids) > MAX_PER_LAYER}
    hidden = 0
    for key, ids in layers.items():
        hidden += max(len(ids) - MAX_PER_LAYER, 0)
        layers[key] = ids[:MAX_PER_LAYER]
    present = sorted(layers)
    widest = max((len(v) for v in layers.values()), default=1)
    width = PAD * 2 + widest * NODE_W + (widest - 1) * GAP_X
    nodes: list[GraphNode] = []
    place: dict[str, GraphNode] = {}
    for row, key in enumerate(present):
        ids = layers[key]
        span = len(ids) * NODE_W + (len(ids) - 1) * GAP_X
        left = (width - span) // 2
        for i, node_id in enumerate(ids):
            node = by_id[node_id]
            art = node.artifact
            placed = GraphNode(
                id=node_id,
                title=_short(art.title if art else "deleted artifact"),
                type=art.artifact_type if art else "",
                layer=key,
                x=left + i * (NODE_W + GAP_X),
                y=PAD + row * (NODE_H + GAP_Y),
                root=node_id == graph.root,
                deleted=art is None,
            )
            nodes.append(placed)
            place[node_id] = placed
    edges = [
        GraphEdge(p.cx, p.y + NODE_H, c.cx, c.y)
        for e in graph.edges
        if (p := place.get(e.parent)) is not None and (c := place.get(e.child)) is not None
    ]
    height = PAD * 2 + len(present) * NODE_H + (len(present) - 1) * GAP_Y
    if isinstance(graph, Neighbourhood):
        more |= graph.more
    return Graph(width, height, nodes, edges, hidden, graph.truncated, tuple(sorted(more)))
