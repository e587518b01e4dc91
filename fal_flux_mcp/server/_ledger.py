"""The user's money: what each job reserved and cost, and whether a call fits the user's limits.

Every submission reserves its estimate in the journal, in the same transaction as its intent and
after the budget check, so that concurrent calls (and several server processes on one journal)
cannot together spend past a limit. Completed jobs then carry their final cost, and jobs fal never ran
are released. The limits are the user's settings; the model can only lower one for one call.

Spend counts every job that is not released, plus the submissions not yet known to be jobs, in the
calendar day and month of the user's local time.

Each user has their own money: every sum here is one owner's (``_identity``), and each user's limits are
``FLUX_MCP_USER_BUDGETS``' entry for them where it sets one, else the default for everyone.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from fal_flux_mcp.server._journal import Check, Journal, Session, SubmitIntent
from fal_flux_mcp.server._schemas import Budgets, CostlyJob, PeriodSpend, SpendReport, UnconfirmedSubmission
from fal_flux_mcp.settings import Settings

_SPENT_SQL = (
    "SELECT (SELECT COALESCE(SUM(cost_usd), 0) FROM jobs WHERE charge != 'released' "
    "AND owner = ? AND created_at >= ? AND created_at < ?) + "
    "(SELECT COALESCE(SUM(cost_usd), 0) FROM intents WHERE owner = ? AND created_at >= ? AND created_at < ?) + "
    "(SELECT COALESCE(SUM(cost_usd), 0) FROM spend WHERE charge != 'released' AND owner = ? AND bucket >= ? "
    "AND bucket < ?)"
)


@dataclass(frozen=True, slots=True)
class Period:
    """A calendar day or month of the user's local time, as UTC bounds."""

    name: str
    start: datetime
    end: datetime

    def bounds(self, owner: str) -> tuple[str, ...]:
        """The owner, start and end for each of the three tables spend is read from (jobs, intents, spend)."""
        start = self.start.astimezone(UTC).isoformat(timespec="microseconds")
        end = self.end.astimezone(UTC).isoformat(timespec="microseconds")
        return (owner, start, end) * 3


@dataclass(frozen=True, slots=True)
class Limit:
    """One of a user's limits (None: no limit), and the setting it came from, named when it refuses."""

    usd: float | None
    setting: str


@dataclass(frozen=True, slots=True)
class Limits:
    """A user's limits: their ``FLUX_MCP_USER_BUDGETS`` entry where it sets one, else everyone's."""

    per_call: Limit
    daily: Limit
    monthly: Limit

    @classmethod
    def of(cls, settings: Settings, owner: str) -> Limits:
        """``owner``'s limits, limit by limit: an entry that sets only a daily budget keeps the others."""
        own = settings.user_budgets.get(owner)

        def pick(field: str, default: str) -> Limit:
            if own is not None and field in own.model_fields_set:
                return Limit(getattr(own, field), f"{settings.env_name('user_budgets')}[{owner!r}].{field}")
            return Limit(getattr(settings, default), settings.env_name(default))

        return cls(
            per_call=pick("max_usd_per_call", "max_usd_per_call"),
            daily=pick("daily_usd", "daily_budget_usd"),
            monthly=pick("monthly_usd", "monthly_budget_usd"),
        )


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

    def spent(self, period: Period, owner: str) -> float:
        """What ``owner`` reserved or spent in ``period`` (released amounts excluded)."""
        return float(self.journal.read(_SPENT_SQL, period.bounds(owner))[0][0])

    def over_limit(self, cost: float, owner: str, *, max_cost_usd: float | None = None) -> str | None:
        """Why ``owner`` spending ``cost`` now needs their yes; None when it fits every limit."""
        if max_cost_usd is not None and cost > max_cost_usd:
            return f"the estimate {usd(cost)} is over this call's max_cost_usd ({usd(max_cost_usd)})"
        per_call = Limits.of(self.settings, owner).per_call
        if per_call.usd is not None and cost > per_call.usd:
            if per_call.usd == 0:
                return f"{per_call.setting} is 0: every call is asked about"
            return f"the estimate {usd(cost)} is over {per_call.setting} ({usd(per_call.usd)})"
        return self._over_budget(None, cost, owner)

    def reserve(self, intent: SubmitIntent, *, approved: bool) -> str | None:
        """Record ``intent`` with its reservation; unless ``approved``, only if it fits the budgets.

        The budgets are checked inside the journal's write transaction: ten concurrent calls against
        a budget that fits three reserve three, whatever the timing.
        """
        check: Check | None = None
        if not approved:

            def check(session: Session) -> str | None:
                return self._over_budget(session, intent.cost_usd or 0.0, intent.owner)

        return self.journal.add_intent(intent, check=check)

    def left(self, owner: str) -> tuple[float | None, float | None]:
        """What is left of ``owner``'s budgets for today and this month (None: no limit)."""
        day, month = today_and_this_month()
        limits = Limits.of(self.settings, owner)
        daily, monthly = limits.daily.usd, limits.monthly.usd
        return (
            None if daily is None else max(0.0, daily - self.spent(day, owner)),
            None if monthly is None else max(0.0, monthly - self.spent(month, owner)),
        )

    def _over_budget(self, session: Session | None, cost: float, owner: str) -> str | None:
        day, month = today_and_this_month()
        limits = Limits.of(self.settings, owner)
        for period, limit in ((day, limits.daily), (month, limits.monthly)):
            if limit.usd is None:
                continue
            if limit.usd == 0:
                return f"{limit.setting} is 0: every call is asked about"
            spent = self._spent_in(session, period, owner)
            if spent + cost > limit.usd + 1e-9:
                left = max(0.0, limit.usd - spent)
                return (
                    f"{usd(cost)} more would exceed {limit.setting} ({usd(limit.usd)}; {usd(spent)} spent "
                    f"{period.name}, {usd(left)} left)"
                )
        return None

    def _spent_in(self, session: Session | None, period: Period, owner: str) -> float:
        if session is None:
            return self.spent(period, owner)
        return float(session.rows(_SPENT_SQL, period.bounds(owner))[0][0])

    def report(self, owner: str) -> SpendReport:
        """``owner``'s spend today, this month and over the last 30 days, budgets, and costliest jobs."""
        day, month = today_and_this_month()
        now = datetime.now(UTC).astimezone()
        thirty = Period("the last 30 days", now - timedelta(days=30), now + timedelta(seconds=1))
        day_left, month_left = self.left(owner)
        limits = Limits.of(self.settings, owner)
        rows = self.journal.read(
            "SELECT job_id, endpoint_id, prompt, cost_usd, charge, created_at FROM jobs WHERE owner = ? AND "
            "created_at >= ? AND cost_usd IS NOT NULL ORDER BY cost_usd DESC, created_at DESC LIMIT 10",
            thirty.bounds(owner)[:2],
        )
        return SpendReport(
            periods=[self._period(period, owner) for period in (day, month, thirty)],
            budgets=Budgets(
                max_usd_per_call=limits.per_call.usd,
                daily_budget_usd=limits.daily.usd,
                monthly_budget_usd=limits.monthly.usd,
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
            unconfirmed_submissions=self.unconfirmed_submissions(owner),
            note="Estimates from fal's prices as fal-flux-mcp knew them, for the jobs it submitted; fal's "
            "invoice (fal.ai/dashboard/billing) is the authority.",
        )

    def unconfirmed_submissions(self, owner: str) -> list[UnconfirmedSubmission]:
        """``owner``'s submissions fal may have queued (and charged) that the key cannot confirm."""
        return [
            UnconfirmedSubmission(
                model=intent.endpoint_id,
                prompt=intent.prompt,
                submitted_at=intent.created_at,
                note=intent.note or "",
            )
            for intent in self.journal.intents(owner)
            if intent.state == "unconfirmed"
        ]

    def _period(self, period: Period, owner: str) -> PeriodSpend:
        by_charge: dict[str, float] = {}
        by_model: dict[str, float] = {}
        # Jobs, jobs past FLUX_MCP_KEEP_DAYS (kept as sums) and submissions not yet known to be jobs.
        rows = self.journal.read(
            "SELECT endpoint_id, charge, cost_usd FROM jobs WHERE owner = ? AND created_at >= ? AND created_at < ? "
            "UNION ALL SELECT endpoint_id, charge, cost_usd FROM spend WHERE owner = ? AND bucket >= ? AND bucket < ? "
            "UNION ALL SELECT endpoint_id, 'reserved', cost_usd FROM intents WHERE owner = ? AND created_at >= ? "
            "AND created_at < ?",
            period.bounds(owner),
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
