"""Chains halted by a finality violation, and the operator's way back (``chain resume``).

A reorg below a final transfer raises ``watcher.finality_violation`` and halts the chain: the
scanner records the event's id in ``chain_state.halted_by`` (with the event, in one
transaction) and refuses every later poll without asking the node. ``proofwatch chain resume
CHAIN --ack EVT`` is the operator saying "I have looked at it": it records who and when
(``chain_resumes``), clears the halt and leaves the acknowledgement in
``chain_state.resume_ack``. The next poll then follows that reorg to the common ancestor
(or, when the reorg is deeper than the stored hashes, re-anchors on the node's chain below
them): transfers not yet final above it are orphaned as usual, final transfers and their
proofs are kept as they are. The acknowledgement is used up by the first poll that gets
through, so it never lets a later violation pass.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy.engine import Engine
from sqlmodel import select

from watcher.errors import BadInput, NotFound, Refused
from watcher.settings import Settings
from watcher.store.db import transaction
from watcher.store.outbox import iso
from watcher.store.tables import ChainResume, ChainState, OutboxEvent

log = structlog.get_logger("watcher.halts")

VIOLATION = "watcher.finality_violation"
_EVENT_ID = re.compile(r"EVT-[0-9a-f]{1,64}")
_BY = re.compile(r"\S(?:.{0,78}\S)?")


def resume_chain(
    engine: Engine, settings: Settings, chain: str, event: str, by: str, now: datetime
) -> dict[str, Any]:
    """Acknowledge violation ``event`` on halted ``chain``; the resume record as a dict.

    Raises ``BadInput`` (exit 2) for an unknown chain, a malformed or unknown event id or an
    empty ``by``; ``Refused`` (exit 3) when the event is not a finality violation of that
    chain, or the chain is not halted by it. Nothing is written unless it succeeds.
    """
    settings.chain(chain)  # BadInput naming the configured chains
    cleaned = event.strip()
    eid = "EVT-" + cleaned[4:].lower() if cleaned[:4].upper() == "EVT-" else cleaned
    if not _EVENT_ID.fullmatch(eid):
        raise BadInput(f"event id {event!r} is not an event id like EVT-3f2a9c...")
    who = " ".join(by.split())
    if not _BY.fullmatch(who):
        raise BadInput(f"--by {by!r} must name who acknowledged it (1-80 characters)")
    with transaction(engine) as session:
        row = session.exec(select(OutboxEvent).where(OutboxEvent.id == eid)).first()
        if row is None:
            raise NotFound(f"event {eid!r} not found")
        data = json.loads(row.body).get("data", {})
        if row.type != VIOLATION or data.get("chain") != chain:
            raise Refused(
                f"event {eid} is a {row.type} of chain {data.get('chain')!r}, "
                f"not a {VIOLATION} of chain {chain!r}"
            )
        state = session.get(ChainState, chain)
        if state is None or state.halted_by is None:
            raise Refused(f"chain {chain} is not halted: there is nothing to resume")
        if state.halted_by != eid:
            raise Refused(
                f"chain {chain} is halted by {state.halted_by}, not by {eid}: acknowledge that one"
            )
        record = ChainResume(
            chain=chain, event_id=eid, resumed_by=who, resumed_at=now, cursor=state.cursor
        )
        state.halted_by, state.resume_ack = None, eid
        session.add(state)
        session.add(record)
    log.warning("chain.resumed", chain=chain, event_id=eid, by=who, cursor=state.cursor)
    return resume_json(record)


def resume_json(record: ChainResume) -> dict[str, Any]:
    return {
        "chain": record.chain,
        "event_id": record.event_id,
        "by": record.resumed_by,
        "at": iso(record.resumed_at),
        "cursor": record.cursor,
    }
