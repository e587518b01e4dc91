"""The user's money: what each job reserved and cost, and whether a call fits the user's limits.

Every submission reserves its estimate in the journal, in the same transaction as its intent and
after the budget check, so that concurrent calls (and several server processes on one journal)
cannot together spend past a limit. Completed jobs then carry their final cost, and jobs fal never ran
are released. The limits are the user's settings; the model can only lower one for one call.

Spend counts every job that is not released, plus the submissions not yet known to be jobs, in the
calendar day and month of the user's local time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from fal_flux_mcp.server._journal import Check, Journal, Session, SubmitIntent
from fal_flux_mcp.server._schemas import Budgets, CostlyJob, PeriodSpend, SpendReport, UnconfirmedSubmission
from fal_flux_mcp.settings import Settings

_SPENT_SQL = (
    "SELECT (SELECT COALESCE(SUM(cost_usd), 0) FROM jobs WHERE charge != 'released' "
    "AND created_at >= ? AND created_at < ?) + "
    "(SELECT COALESCE(SUM(cost_usd), 0) FROM intents WHERE created_at >= ? AND created_at < ?) + "
    "(SELECT COALESCE(SUM(cost_usd), 0) FROM spend WHERE charge != 'released' AND bucket >= ? AND bucket < ?)"
)


@dataclass(frozen=True, slots=True)
class Period:
    """A calendar day or month of the user's local time, as UTC bounds."""

    name: str
    start: datetime
    end: datetime

    def bounds(self) -> tuple[str, str, str, str, str, str]:
        """The start and end for each of the three tables spend is read from (jobs, intents, spend)."""
        start = self.start.astimezone(UTC).isoformat(timespec="microseconds")
        end = self.end.astimezone(UTC).isoformat(timespec="microseconds")
        return start, end, start, end, start, end


def today_and_this_month(now: datetime | None = None) -> tuple[Period, Period]:
    """The local calendar day and month around ``now``."""
    local = (now or datetime.now(UTC)).astimezone()
    day = local.replace(hour=0, minute=0, second=0, microsecond=0)
    month = day.replace(day=1)
    next_month = (month + timedelta(days=32)).replace(day=1)
    return Period("today", day, day + timedelta(days=1)), Period("this month", month, next_month)


def usd(value: float) -> str:
    """A sum of money as people read it: cents for cents, more digits only where they matter."""
    return f"${value:.2f}" if value >= 0.1 or value == 0 else f"${value:.3f}"


class Ledger:
    """Budgets and spend over the journal."""

    def __init__(self, journal: Journal, settings: Settings) -> None:
        self.journal = journal
        self.settings = settings

    def spent(self, period: Period) -> float:
        """What was reserved or spent in ``period`` (released amounts excluded)."""
        return float(self.journal.read(_SPENT_SQL, period.bounds())[0][0])

    def over_limit(self, cost: float, *, max_cost_usd: float | None = None) -> str | None:
        """Why spending ``cost`` now needs the user's yes; None when it fits every limit."""
        if max_cost_usd is not None and cost > max_cost_usd:
            return f"the estimate {usd(cost)} is over this call's max_cost_usd ({usd(max_cost_usd)})"
        per_call = self.settings.max_usd_per_call
        if per_call is not None and cost > per_call:
            if per_call == 0:
                return "FLUX_MCP_MAX_USD_PER_CALL is 0: every call is asked about"
            return f"the estimate {usd(cost)} is over FLUX_MCP_MAX_USD_PER_CALL ({usd(per_call)})"
        return self._over_budget(None, cost)

    def reserve(self, intent: SubmitIntent, *, approved: bool) -> str | None:
        """Record ``intent`` with its reservation; unless ``approved``, only if it fits the budgets.

        The budgets are checked inside the journal's write transaction: ten concurrent calls against
        a budget that fits three reserve three, whatever the timing.
        """
        check: Check | None = None
        if not approved:

            def check(session: Session) -> str | None:
                return self._over_budget(session, intent.cost_usd or 0.0)

        return self.journal.add_intent(intent, check=check)

    def left(self) -> tuple[float | None, float | None]:
        """What is left of today's and this month's budgets (None: no limit)."""
        day, month = today_and_this_month()
        daily, monthly = self.settings.daily_budget_usd, self.settings.monthly_budget_usd
        return (
            None if daily is None else max(0.0, daily - self.spent(day)),
            None if monthly is None else max(0.0, monthly - self.spent(month)),
        )

    def _over_budget(self, session: Session | None, cost: float) -> str | None:
        day, month = today_and_this_month()
        limits = (
            (day, self.settings.daily_budget_usd, "FLUX_MCP_DAILY_BUDGET_USD"),
            (month, self.settings.monthly_budget_usd, "FLUX_MCP_MONTHLY_BUDGET_USD"),
        )
        for period, limit, setting in limits:
            if limit is None:
                continue
            if limit == 0:
                return f"{setting} is 0: every call is asked about"
            spent = self._spent_in(session, period)
            if spent + cost > limit + 1e-9:
                left = max(0.0, limit - spent)
                return (
                    f"{usd(cost)} more would exceed {setting} ({usd(limit)}; {usd(spent)} spent {period.name}, "
                    f"{usd(left)} left)"
                )
        return None

    def _spent_in(self, session: Session | None, period: Period) -> float:
        if session is None:
            return self.spent(period)
        return float(session.rows(_SPENT_SQL, period.bounds())[0][0])

    def report(self) -> SpendReport:
        """Spend today, this month and over the last 30 days, the budgets, and the costliest jobs."""
        day, month = today_and_this_month()
        now = datetime.now(UTC).astimezone()
        thirty = Period("the last 30 days", now - timedelta(days=30), now + timedelta(seconds=1))
        day_left, month_left = self.left()
        settings = self.settings
        rows = self.journal.read(
            "SELECT job_id, endpoint_id, prompt, cost_usd, charge, created_at FROM jobs WHERE created_at >= ? "
            "AND cost_usd IS NOT NULL ORDER BY cost_usd DESC, created_at DESC LIMIT 10",
            (thirty.bounds()[0],),
        )
        return SpendReport(
            periods=[self._period(period) for period in (day, month, thirty)],
            budgets=Budgets(
                max_usd_per_call=settings.max_usd_per_call,
                daily_budget_usd=settings.daily_budget_usd,
                monthly_budget_usd=settings.monthly_budget_usd,
                left_today_usd=None if day_left is None else _round(day_left),
                left_month_usd=None if month_left is None else _round(month_left),
            ),
            most_expensive=[
                CostlyJob(
                    job_id=row["job_id"],
                    model=row["endpoint_id"],
                    prompt=row["prompt"][:200],
                    cost_usd=_round(row["cost_usd"]),
                    charge=row["charge"],
                    created_at=datetime.fromisoformat(row["created_at"]),
                )
                for row in rows
            ],
            unconfirmed_submissions=self.unconfirmed_submissions(),
            note="Estimates from fal's prices as fal-flux-mcp knew them, for the jobs it submitted; fal's "
            "invoice (fal.ai/dashboard/billing) is the authority.",
        )

    def unconfirmed_submissions(self) -> list[UnconfirmedSubmission]:
        """Submissions fal may have queued (and charged) that the key cannot confirm: never sent again."""
        return [
            UnconfirmedSubmission(
                model=intent.endpoint_id,
                prompt=intent.prompt,
                submitted_at=intent.created_at,
                note=intent.note or "",
            )
            for intent in self.journal.intents()
            if intent.state == "unconfirmed"
        ]

    def _period(self, period: Period) -> PeriodSpend:
        by_charge: dict[str, float] = {}
        by_model: dict[str, float] = {}
        # Jobs, jobs past FLUX_MCP_KEEP_DAYS (kept as sums) and submissions not yet known to be jobs.
        rows = self.journal.read(
            "SELECT endpoint_id, charge, cost_usd FROM jobs WHERE created_at >= ? AND created_at < ? "
            "UNION ALL SELECT endpoint_id, charge, cost_usd FROM spend WHERE bucket >= ? AND bucket < ? "
            "UNION ALL SELECT endpoint_id, 'reserved', cost_usd FROM intents WHERE created_at >= ? AND created_at < ?",
            period.bounds(),
        )
        for row in rows:
            endpoint_id, charge, usd_ = row[0], row[1], float(row[2] or 0)
            by_charge[charge] = by_charge.get(charge, 0.0) + usd_
            if charge != "released":
                by_model[endpoint_id] = by_model.get(endpoint_id, 0.0) + usd_
        counted = ("final", "reserved", "possibly_charged")
        return PeriodSpend(
            period=period.name,
            total_usd=_round(sum(by_charge.get(charge, 0.0) for charge in counted)),
            final_usd=_round(by_charge.get("final", 0.0)),
            reserved_usd=_round(by_charge.get("reserved", 0.0)),
            possibly_charged_usd=_round(by_charge.get("possibly_charged", 0.0)),
            released_usd=_round(by_charge.get("released", 0.0)),
            by_model={model: _round(value) for model, value in sorted(by_model.items())},
        )


def _round(value: float) -> float:
    """A sum of money, rounded to a hundredth of a cent so that float dust never shows."""
    return round(value, 6)
