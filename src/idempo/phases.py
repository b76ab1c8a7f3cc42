"""Atomic phases for operations with foreign side effects (see ``idempo._async.phases``).

from idempo.phases import Phase

result = idem.run_phases(
    [
        Phase("charge", lambda ctx: provider.charge(100, key=ctx.foreign_key("charge"))),
        Phase("record", lambda ctx: save(ctx.conn, ctx.results["charge"]), local=True),
    ],
    key=order_id,
    conn=conn,
)
"""

from idempo._async.phases import AsyncPhase, AsyncPhaseContext
from idempo._sync.phases import Phase, PhaseContext

__all__ = ["AsyncPhase", "AsyncPhaseContext", "Phase", "PhaseContext"]
