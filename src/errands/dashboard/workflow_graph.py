"""A workflow's jobs laid out as a graph, for the dashboard's workflow page.

:func:`build_graph` places each job (node) in a column by its longest path from
the jobs without dependencies (its layer), one row per job of that layer, and
draws each dependency as a curve from the right edge of the job depended on to
the left edge of the job waiting for it. The template draws it as inline SVG
(autoescaped, like every page: node names and job classes are user data); only
numbers computed here go into coordinates and paths.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from errands import formatting
from errands.backends.reader import JobReader
from errands.workflow_models import NodeStatus, WorkflowStatus

NODE_WIDTH = 190
NODE_HEIGHT = 46
COLUMN_GAP = 56
ROW_GAP = 14
MARGIN = 8
#: Characters of a node's name and job class shown in its box (its title has them whole).
LABEL_LENGTH = 24

#: The status colour (dashboard.css ``s-*``) each state shown wears.
NODE_STYLES = {
    "waiting": "SCHEDULED",
    "pending": "PENDING",
    "running": "RUNNING",
    "succeeded": "SUCCESSFUL",
    "failed": "ERRORED",
    "cancelled": "CANCELLED",
}


@dataclass(frozen=True)
class GraphNode:
    node: NodeStatus
    state: str  # as shown: formatting.node_state
    style: str  # its status colour
    x: int
    y: int
    label: str
    job_label: str
    #: the job page it links to: its result once it ended, else its current request
    job_uuid: uuid.UUID


@dataclass(frozen=True)
class GraphEdge:
    path: str
    style: str  # the colour of the job depended on


@dataclass(frozen=True)
class Graph:
    width: int
    height: int
    node_width: int
    node_height: int
    nodes: list[GraphNode]
    edges: list[GraphEdge]


@dataclass(frozen=True)
class WorkflowRow:
    """One workflow of the list: its status, and its jobs by state as shown."""

    status: WorkflowStatus
    counts: list[tuple[str, int]]


def layers(nodes: tuple[NodeStatus, ...]) -> dict[int, int]:
    """Each node's layer: 0 without dependencies, else one more than its deepest dependency."""
    by_index = {node.node: node for node in nodes}
    found: dict[int, int] = {}
    for start in sorted(by_index):
        stack = [start]
        while stack:  # iterative depth-first: a long chain needs no deep recursion
            index = stack[-1]
            if index in found:
                stack.pop()
                continue
            parents = [p for p in by_index[index].depends_on if p in by_index and p != index]
            missing = [p for p in parents if p not in found and p not in stack]
            if missing:
                stack.extend(missing)
                continue
            found[index] = 1 + max((found.get(p, 0) for p in parents), default=-1)
            stack.pop()
    return found


def build_graph(status: WorkflowStatus) -> Graph:
    """Where each job's box and each dependency's curve go."""
    layer_of = layers(status.nodes)
    rows_used: dict[int, int] = {}
    nodes: list[GraphNode] = []
    place: dict[int, GraphNode] = {}
    for node in status.nodes:
        column = layer_of[node.node]
        row = rows_used.get(column, 0)
        rows_used[column] = row + 1
        state = formatting.node_state(node)
        placed = GraphNode(
            node=node,
            state=state,
            style=NODE_STYLES.get(state, "PENDING"),
            x=MARGIN + column * (NODE_WIDTH + COLUMN_GAP),
            y=MARGIN + row * (NODE_HEIGHT + ROW_GAP),
            label=clip(node.name, LABEL_LENGTH),
            job_label=clip(node.job_class.rsplit(".", 1)[-1], LABEL_LENGTH),
            job_uuid=node.result_uuid or node.request_uuid,
        )
        nodes.append(placed)
        place[node.node] = placed
    edges = []
    for child in nodes:
        for parent_index in child.node.depends_on:
            parent = place.get(parent_index)
            if parent is not None:
                edges.append(GraphEdge(path=curve(parent, child), style=parent.style))
    columns = max(layer_of.values(), default=0) + 1
    rows = max(rows_used.values(), default=1)
    return Graph(
        width=2 * MARGIN + columns * NODE_WIDTH + (columns - 1) * COLUMN_GAP,
        height=2 * MARGIN + rows * NODE_HEIGHT + (rows - 1) * ROW_GAP,
        node_width=NODE_WIDTH,
        node_height=NODE_HEIGHT,
        nodes=nodes,
        edges=edges,
    )


def curve(parent: GraphNode, child: GraphNode) -> str:
    """An SVG path from the right middle of ``parent`` to the left middle of ``child``."""
    x1, y1 = parent.x + NODE_WIDTH, parent.y + NODE_HEIGHT // 2
    x2, y2 = child.x, child.y + NODE_HEIGHT // 2
    bend = (x1 + x2) // 2
    return f"M{x1},{y1} C{bend},{y1} {bend},{y2} {x2},{y2}"


def clip(text: str, length: int) -> str:
    return text if len(text) <= length else text[: length - 1] + "…"


def shown_counts(status: WorkflowStatus) -> list[tuple[str, int]]:
    """Its jobs by state as shown (``running`` apart from ``pending``), in NODE_STYLES' order."""
    counts: dict[str, int] = {}
    for node in status.nodes:
        shown = formatting.node_state(node)
        counts[shown] = counts.get(shown, 0) + 1
    return [(state, counts[state]) for state in NODE_STYLES if state in counts]


def recent(reader: JobReader, limit: int) -> list[WorkflowRow]:
    """The latest workflows, newest first, each with its jobs' states."""
    rows = []
    for key, _, _ in reader.recent_workflows(limit=limit):
        found = reader.workflow(uuid=key)
        if found is not None:  # deleted meanwhile
            rows.append(WorkflowRow(status=found, counts=shown_counts(found)))
    return rows


def workflow_of_job(reader: JobReader, request_uuids: list[uuid.UUID]) -> WorkflowStatus | None:
    """The workflow one of these requests (a job's attempts) belongs to, if any."""
    for request_uuid in reversed(request_uuids):
        key = reader.workflow_of_request(request_uuid=request_uuid)
        if key is not None:
            return reader.workflow(uuid=key)
    return None
