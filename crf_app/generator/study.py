"""A large, realistic generated study, written fast: `crf-app demo --subjects N` (N > 100).

The small demo (crf_app.services.demo) goes through the services one save at a time, 5–10 ms
each: far too slow for 10,000 subjects. This module writes the same rows in bulk.

What it builds (`generate_study`): the protocol of forms/study.yaml spread over `sites` sites
(10 by default), its accounts (the demo accounts and an investigator per site), and N subjects
enrolled over up to two years up to yesterday. Each subject lives a timed story: enrolment,
screening (about 6 % screen failures), baseline, 28 days of dosing with a missed or wrong dose
now and then, the D7, D14 and FU30 visits with every scheduled form filled, adverse events
(a few serious, reported within 24 h), a withdrawal now and then, end of participation; then
the monitor's visit (source data verification of every form, a query now and then, answered
or corrected by the site and closed) and the investigator's casebook signature. Subjects
enrolled recently are still under way, so the study holds every stage. The generated study's
protocol (stored in it) differs from forms/study.yaml in two ways only: its sites, and courses
of up to 28 days (the stroke regimen allows 14) so that the 28 days of dosing are on protocol.

How it stays honest:

* the study, its sites and accounts are created through the services (create_study, add_user);
* every form entry is produced per item type and validated by the forms engine
  (`validate_form`, complete): only entries that pass are used, stored as the engine's
  canonical values; soft-check warnings open automatic queries, as `save_form` does;
* doses and adverse events are checked by the domain rules (`validate_dose`, `check_ae`);
  findings open queries as the dosing service does;
* each action writes exactly the rows and audit events its service would write (same fields,
  values, reasons, order, row versions): tests/services/test_generate.py runs the same actions
  through the services and compares every row and event;
* the audit events are hash-chained by `storage.audit.chain_events`, the same hashing as the
  audit writer, in the global time order of the actions (subjects interleave as at real sites).

Speed: the actions are merged across subjects in time order (only subjects under way are held
in memory); their rows are kept per subject until its story ends, then inserted with one
executemany per table in large transactions (foreign-key checks off during the load and
checked at the end, synchronous=OFF; a crash leaves an unusable file, so `crf-app demo` writes
a new database only).
"""

from __future__ import annotations

import heapq
import os
import random
import time as _clock
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Any

from sqlalchemy import Connection, Table, func, select, update

from crf_app.domain.addresses import (
    ae_address,
    dose_address,
    form_address,
    item_address,
    visit_address,
)
from crf_app.domain.adverse_events import AeContext, AeInput
from crf_app.domain.dosing import DoseContext, DoseInput, DoseRecord, usual_day, validate_dose
from crf_app.domain.errors import CrfError
from crf_app.domain.forms import FormDef, FormLibrary, FormResult, ItemDef, validate_form
from crf_app.domain.protocol import Protocol
from crf_app.domain.roles import Role
from crf_app.domain.subjects import (
    Enrollment,
    SubjectStatus,
    check_baseline,
    check_enrollment,
    schedule,
    window_deviation,
)
from crf_app.domain.values import value_text
from crf_app.services.accounts import login
from crf_app.services.adverse_events import CRITERIA_COLUMNS, check_ae
from crf_app.services.context import StudyHandle
from crf_app.services.demo import DEMO_ACCOUNTS, DEMO_PASSWORD
from crf_app.services.dosing import QUERY_TARGET as DOSE_TARGET
from crf_app.services.dosing import SYSTEM_USER as DOSE_SYSTEM
from crf_app.services.forms import COMPLETE, NOT_STARTED, flatten, form_library
from crf_app.services.queries import SYSTEM_USER as EDIT_CHECK_SYSTEM
from crf_app.services.setup import NewUser, add_user, create_study
from crf_app.services.signoff import signed_values_hash
from crf_app.storage.audit import GENESIS_HASH, chain_events
from crf_app.storage.engine import Database
from crf_app.storage.log_models import AdverseEvent, DosingRecord
from crf_app.storage.models import (
    AuditEvent,
    FormInstance,
    ItemValue,
    Query,
    QueryMessage,
    Site,
    Subject,
    User,
    Visit,
)
from crf_app.storage.signoff_models import Signature, Verification

GENERATOR_VERSION = 1  # bump when the generated data changes (benchmark caches are keyed by it)
DEFAULT_SEED = 2026
DEFAULT_SITES = 10
DOSING_DAYS = 28
SITE_NAMES = ["Northfield Stroke Unit", "Riverside Neurorehabilitation Centre",
              "Lakeside University Neurology", "Harbour City Hospital Stroke Centre",
              "Westbrook Neurological Institute", "Pinecrest Rehabilitation Hospital",
              "St Anselm's Stroke Service", "Eastgate Memorial Neurology",
              "Hillview Brain Recovery Clinic", "Southport General Stroke Unit"]


@dataclass(frozen=True)
class Rates:
    """How often things happen (per subject unless said otherwise)."""

    screen_fail: float = 0.06
    scr_deviation: float = 0.02  # screening outside its window before baseline
    visit_deviation: float = 0.03  # per visit: outside its window
    withdraw: float = 0.05
    missed_dose: float = 0.04  # per day
    wrong_dose: float = 0.01  # per day: a dose outside the regimen (a dosing query)
    ae: float = 0.35
    second_ae: float = 0.10
    sae: float = 0.01
    outlier: float = 0.01  # per numeric value: outside its soft range (an automatic query)
    manual_query: float = 0.2  # the monitor questions a value
    correction: float = 0.5  # of the questioned values: corrected (else confirmed)
    conmed_added: float = 0.2  # per visit with the medication table: one more medication


@dataclass
class GenerateSummary:
    """What `generate_study` wrote."""

    study: StudyHandle
    subjects: int
    sites: int
    seed: int
    seconds: float = 0.0
    rows: dict[str, int] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=dict)

    @property
    def item_values(self) -> int:
        return self.rows.get("item_value", 0)

    @property
    def audit_events(self) -> int:
        return self.rows.get("audit_event", 0)

    def text(self) -> str:
        status = ", ".join(f"{n} {SubjectStatus.LABELS.get(s, s).lower()}"
                           for s, n in sorted(self.statuses.items()))
        r = self.rows
        return (f"{self.subjects} subjects over {self.sites} sites ({status}); "
                f"{r.get('form_instance', 0):,} forms, {self.item_values:,} item values, "
                f"{r.get('dosing_record', 0):,} dosing records, "
                f"{r.get('adverse_event', 0):,} adverse events, {r.get('query', 0):,} queries, "
                f"{r.get('verification', 0):,} verifications, "
                f"{r.get('signature', 0):,} signatures, {self.audit_events:,} audit events; "
                f"{self.seconds:.1f} s")


# --- the study and its accounts (through the services) -------------------------------------------
def generated_protocol(protocol: Protocol, sites: int = DEFAULT_SITES) -> Protocol:
    """The protocol with `sites` sites (S01…), and a course long enough for 28 days of dosing."""
    names = {s.code: s.name for s in protocol.sites}
    data = protocol.model_dump()
    data["sites"] = [{"code": f"S{k:02d}",
                      "name": names.get(f"S{k:02d}", SITE_NAMES[(k - 1) % len(SITE_NAMES)]
                                        + ("" if k <= len(SITE_NAMES) else f" {k}"))}
                     for k in range(1, sites + 1)]
    for regimen in data["regimens"]:
        regimen["course_days"]["max"] = max(regimen["course_days"]["max"], DOSING_DAYS)
    return Protocol.model_validate(data)


def site_investigator(code: str) -> str:
    """The investigator account of a site (S01 has the demo's `investigator`)."""
    return "investigator" if code == "S01" else f"investigator_{code.lower()}"


def new_study(db: Database, protocol: Protocol, forms: dict,
              sites: int = DEFAULT_SITES) -> StudyHandle:
    """The study (the protocol over `sites` sites) and its accounts, through the services: the
    demo accounts and an investigator per site (`site_investigator`), password DEMO_PASSWORD."""
    if db.engine.dialect.name != "sqlite":
        raise CrfError("the study generator writes SQLite databases only")
    protocol = generated_protocol(protocol, sites)
    admin = DEMO_ACCOUNTS[0]
    study = create_study(db, protocol, forms, is_demo=True,
                         admin=NewUser(admin[0], admin[1], admin[2], DEMO_PASSWORD))
    actor = login(study, admin[0], DEMO_PASSWORD).user.actor
    for username, full_name, role, site in DEMO_ACCOUNTS[1:]:
        add_user(db, actor, NewUser(username, full_name, role, DEMO_PASSWORD, site))
    for k, site_def in enumerate(protocol.sites[1:], start=2):
        add_user(db, actor, NewUser(site_investigator(site_def.code),
                                    f"Dr {_SURNAMES[k % len(_SURNAMES)]} ({site_def.code})",
                                    Role.INVESTIGATOR, DEMO_PASSWORD, site_def.code))
    return study


def generate_study(db: Database, protocol: Protocol, forms: dict, *, subjects: int,
                   sites: int = DEFAULT_SITES, seed: int = DEFAULT_SEED,
                   today: date | None = None, rates: Rates | None = None,
                   progress: Callable[[int, int], None] | None = None) -> GenerateSummary:
    """Create the study in the empty database `db` and generate `subjects` subjects."""
    start = _clock.perf_counter()
    study = new_study(db, protocol, forms, sites)
    plan = Plan(study.protocol, form_library(study), subjects, seed=seed,
                today=today or date.today(), rates=rates)
    writer = BulkWriter(study)
    writer.run(plan.actions(), progress=progress, total=subjects)
    summary = GenerateSummary(study, subjects, sites, seed, _clock.perf_counter() - start,
                              writer.written, writer.statuses)
    return summary


# --- the plan: every subject's actions, in time order ---------------------------------------------
@dataclass(frozen=True, slots=True)
class Action:
    """One thing a user does to one subject at a time (what one service call does)."""

    at: datetime  # UTC
    subject: int  # the subject's index in the plan
    user: str  # username
    kind: str  # enrol, visit_date, baseline, form, usual_day, dose, ae, sae_reported, query,
    #            answer, close, verify, sign, end; "done" when the subject's story is over
    args: tuple = ()


def local(day: date, minute: int, second: int = 0) -> datetime:
    """`minute` minutes after local midnight of `day`, as a UTC datetime."""
    naive = datetime.combine(day, time()) + timedelta(minutes=minute, seconds=second)
    return naive.astimezone(UTC)


_SURNAMES = ["Okafor", "Lindqvist", "Moreau", "Tanaka", "Novak", "Haddad", "Kowalski", "Silva",
             "Ivanova", "Brennan", "Mehta", "Rossi"]
_MEDS = [("Acetylsalicylic acid", "Secondary stroke prevention", "75", "MG", "PO", "QD"),
         ("Atorvastatin", "Hypercholesterolaemia", "40", "MG", "PO", "QHS"),
         ("Amlodipine", "Hypertension", "5", "MG", "PO", "QD"),
         ("Ramipril", "Hypertension", "5", "MG", "PO", "QD"),
         ("Metformin", "Type 2 diabetes", "500", "MG", "PO", "BID"),
         ("Clopidogrel", "Secondary stroke prevention", "75", "MG", "PO", "QD"),
         ("Apixaban", "Atrial fibrillation", "5", "MG", "PO", "BID"),
         ("Omeprazole", "Gastric protection", "20", "MG", "PO", "QD"),
         ("Sertraline", "Post-stroke depression", "50", "MG", "PO", "QD"),
         ("Paracetamol", "Headache", "500", "MG", "PO", "TID"),
         ("Levothyroxine", "Hypothyroidism", "50", "UG", "PO", "QD"),
         ("Insulin glargine", "Type 2 diabetes", "18", "IU", "SC", "QHS")]
_CONDITIONS = ["Hypertension", "Type 2 diabetes mellitus", "Hypercholesterolaemia",
               "Atrial fibrillation", "Osteoarthritis of the knee", "Hypothyroidism",
               "Chronic obstructive pulmonary disease", "Gastro-oesophageal reflux",
               "Benign prostatic hyperplasia", "Migraine", "Сахарный диабет 2 типа",
               "Coronary artery disease"]
_TEXTS = ["See source document", "As reported by the subject", "Confirmed with the GP",
          "Per hospital discharge letter"]
_WITHDRAWAL = ["Subject withdrew consent", "Moved away from the study area",
               "Investigator decision: intercurrent illness", "Lost to follow-up"]
_AE_TERMS = ["NASAL_IRRITATION", "NASAL_DRYNESS", "NASAL_BURNING", "HEADACHE", "DIZZINESS",
             "IRRITABILITY", "ANXIETY", "RESTLESSNESS", "INSOMNIA"]
_NASAL = {"NASAL_IRRITATION", "NASAL_DRYNESS", "NASAL_BURNING"}
_RELATIONSHIPS = ["NOT_RELATED", "UNLIKELY", "POSSIBLE", "PROBABLE"]
ANSWER_CONFIRMED = "Value confirmed against the source document"
ANSWER_CORRECTED = "Corrected: transcription error"
ANSWER_DOSE = "Dosing error by the subject; retrained on the dose"
CLOSE_TEXT = "Answer accepted"
CORRECTION_REASON = "Transcription error; corrected against the source document"
SIGN_MEANING = "Responsible investigator sign-off"
COMPLETED_REASON = "Completed the follow-up visit per protocol"


@dataclass
class _Person:
    """What the planner knows about a subject while filling its forms."""

    sex: str
    birth_year: int
    weight: float
    height: int
    severity: int  # NIHSS at screening
    eligible: bool = True
    meds: list[tuple[str, ...]] = field(default_factory=list)
    last_dose: date | None = None


class Plan:
    """Every subject's actions (`actions()`: all of them, merged in time order)."""

    def __init__(self, protocol: Protocol, lib: FormLibrary, n: int, *, seed: int, today: date,
                 rates: Rates | None = None):
        self.protocol, self.lib, self.n, self.seed = protocol, lib, n, seed
        self.rates = rates or Rates()
        self.today = today
        self.cutoff = local(today, 0)  # nothing happens from today on
        self.span = min(730, max(90, n // 5))  # enrolment period, days
        self.first = today - timedelta(days=self.span)
        self.sites = [s.code for s in protocol.sites]
        self.arms = [a.code for a in protocol.arms]
        self.width = max(3, len(str(int(n / len(self.sites) * 2))))
        weights = random.Random(seed).choices(range(1, 6), k=len(self.sites))
        self.site_weights = [1 + w / 5 for w in weights]
        self.per_site = dict.fromkeys(self.sites, 0)
        self.fill = FormFiller(lib)

    # -- merging every subject's story, in time order --
    def actions(self) -> Iterator[Action]:
        """Every action of every subject in time order, then ("done") when a subject's story
        ends. Subjects join as their enrolment comes up, so only those under way are held."""
        heap: list[tuple[datetime, int, int, list[Action]]] = []
        nxt = 0
        pending = self.subject(0) if self.n else None
        while heap or pending is not None:
            if pending is not None and (not pending or not heap or pending[0].at <= heap[0][0]):
                if pending:
                    heapq.heappush(heap, (pending[0].at, nxt, 0, pending))
                nxt += 1
                pending = self.subject(nxt) if nxt < self.n else None
                continue
            at, i, k, acts = heapq.heappop(heap)
            yield acts[k]
            if k + 1 < len(acts):
                heapq.heappush(heap, (acts[k + 1].at, i, k + 1, acts))
            else:
                yield Action(at, i, "", "done")

    # -- one subject's story --
    def subject(self, i: int) -> list[Action]:
        """Subject i's actions in time order (those before today)."""
        rng = random.Random(self.seed * 1_000_003 + i)
        r = self.rates
        site = rng.choices(self.sites, self.site_weights)[0]
        self.per_site[site] += 1
        number = f"{site}-{self.per_site[site]:0{self.width}d}"
        inv = site_investigator(site)
        sex = "F" if rng.random() < 0.45 else "M"
        person = _Person(sex, self.today.year - rng.randint(35, 79),
                         rng.uniform(52, 88) if sex == "F" else rng.uniform(62, 105),
                         rng.randint(152, 178) if sex == "F" else rng.randint(163, 192),
                         rng.randint(4, 16), eligible=rng.random() >= r.screen_fail)
        consent = self.first + timedelta(days=i * self.span // max(self.n, 1))
        acts: list[Action] = []

        def act(day: date, minute: int, user: str, kind: str, *args: Any) -> datetime:
            at = local(day, minute, rng.randint(0, 59))
            if at < self.cutoff:
                acts.append(Action(at, i, user, kind, args))
            return at

        initials = "".join(rng.choice("ABCDEFGHIJKLMNOPRSTVWZ") for _ in range(rng.choice((2, 3))))
        act(consent, 9 * 60 + rng.randint(0, 25), inv, "enrol", Enrollment(
            number, site, initials, person.birth_year, sex, rng.choice(self.arms), consent,
            consent))
        scr = consent + timedelta(days=rng.choice((0, 0, 1, 1, 2)))
        auto: list[tuple[date, tuple]] = []  # (day raised, query key) to answer and close
        self._visit(act, rng, person, "SCR", scr, inv, auto)
        if not person.eligible:
            return self._sorted(acts)
        baseline = scr + timedelta(days=9 if rng.random() < r.scr_deviation
                                   else rng.randint(1, 7))
        act(baseline, 8 * 60 + 30, inv, "baseline", baseline)
        withdrawn = baseline + timedelta(days=rng.randint(2, 26)) \
            if rng.random() < r.withdraw else None  # before the FU30 visit
        end = withdrawn
        # dosing, entered from the diary each evening
        person.last_dose = None
        for d in range(DOSING_DAYS):
            day = baseline + timedelta(days=d)
            if withdrawn is not None and day >= withdrawn:
                break
            minute = 19 * 60 + rng.randint(0, 100)
            if rng.random() < r.missed_dose:
                act(day, minute, inv, "dose", DoseInput(
                    date=day.isoformat(), missed=True,
                    missed_reason=rng.choice(["Subject forgot", "Nasal congestion",
                                              "Away from home"])), "")
                continue
            lot = f"L{day.year % 100:02d}{(day.month - 1) // 3 + 1}-{site}"
            if rng.random() < r.wrong_dose:  # two separate entries, the second one wrong
                key = f"dose-{day.isoformat()}"
                for t, dose, side, k in (("08:00", "0.1", "LEFT", ""),
                                         ("12:00", "0.4", "RIGHT", key)):
                    act(day, minute, inv, "dose", DoseInput(
                        date=day.isoformat(), time=t, dose_mg=dose, instillations="1",
                        nostril=side, lot=lot, given_by="SELF"), k)
                auto.append((day, ("dose", key, "dose_range")))
            else:
                act(day, minute, inv, "usual_day", day, time(8, 0), lot)
            person.last_dose = day
        # the visits after baseline
        windows = {"BL": (0, (0,)), "D7": (6, (-1, 0, 0, 0, 1)), "D14": (13, (-2, 0, 0, 1, 2)),
                   "FU30": (29, (-1, 0, 0, 1, 2, 3))}
        fu30 = None
        for v in self.protocol.visits[1:]:
            offset, spread = windows.get(v.code, (v.day - 1, (0,)))
            day = baseline + timedelta(days=offset + rng.choice(spread))
            if v.code != "BL" and rng.random() < r.visit_deviation:
                day = baseline + timedelta(days=offset + v.window.after + 2)
            if withdrawn is not None and day >= withdrawn:
                break
            self._visit(act, rng, person, v.code, day, inv, auto)
            if v.code == "FU30":
                fu30 = day
        if fu30 is not None:
            act(fu30, 17 * 60, inv, "end", SubjectStatus.COMPLETED, fu30, COMPLETED_REASON)
            end = fu30
        if withdrawn is not None:
            act(withdrawn, 16 * 60, inv, "end", SubjectStatus.WITHDRAWN, withdrawn,
                rng.choice(_WITHDRAWAL))
        self._adverse_events(act, rng, inv, consent, baseline, person.last_dose, withdrawn)
        # the site answers automatic queries within a few days
        for day, key in auto:
            act(day + timedelta(days=rng.randint(1, 3)), 15 * 60, inv, "answer", key,
                ANSWER_DOSE if key[0] == "dose" else ANSWER_CONFIRMED)
        if end is not None:
            self._monitoring(acts, act, rng, inv, end + timedelta(days=rng.randint(7, 21)),
                             auto)
        return self._sorted(acts)

    @staticmethod
    def _sorted(acts: list[Action]) -> list[Action]:
        acts.sort(key=lambda a: a.at)  # stable: same-time actions keep their order
        return acts

    def _visit(self, act, rng: random.Random, person: _Person, code: str, day: date,
               inv: str, auto: list) -> None:
        act(day, 9 * 60 + 30, inv, "visit_date", code, day)
        minute = 9 * 60 + 40
        for form_id in self.protocol.visit(code).forms:
            form = self.lib.get(form_id)
            raw, result = self.fill.entry(form, rng, self.rates, person, day, code)
            act(day, minute, inv, "form", code, form_id, raw, result, "")
            auto.extend((day, ("auto", code, form_id, w.item_id,
                               w.row if w.row is not None else 0, w.rule))
                        for w in result.warnings)
            if form_id == "eligibility" and not person.eligible:
                return
            minute += rng.randint(4, 9)

    def _adverse_events(self, act, rng: random.Random, inv: str, consent: date,
                        baseline: date, last_dose: date | None,
                        withdrawn: date | None) -> None:
        r = self.rates
        last = last_dose or baseline
        count = (rng.random() < r.ae) + (rng.random() < r.second_ae)
        for _ in range(count):
            onset = baseline + timedelta(days=rng.randint(1, max(1, (last - baseline).days)))
            lasted = rng.randint(0, 4)
            recorded = onset + timedelta(days=lasted + rng.randint(0, 2))
            if withdrawn is not None and recorded >= withdrawn:
                continue
            term = rng.choice(_AE_TERMS)
            mild = rng.random() < 0.7
            act(recorded, 11 * 60 + rng.randint(0, 50), inv, "ae", AeInput(
                term=term, location=rng.choice(["LEFT_NOSTRIL", "RIGHT_NOSTRIL", "BOTH_NOSTRILS"])
                if term in _NASAL else "NOT_APPLICABLE", start_date=onset.isoformat(),
                end_date=(onset + timedelta(days=lasted)).isoformat(),
                severity="MILD" if mild else "MODERATE", grade="1" if mild else "2",
                serious="N", relationship=rng.choice(_RELATIONSHIPS), action="NONE",
                outcome="RECOVERED",
                treatment="" if mild else "Paracetamol 500 mg as needed"))
        if rng.random() < r.sae:
            onset = baseline + timedelta(days=rng.randint(1, max(1, (last - baseline).days)))
            if withdrawn is None or onset < withdrawn:
                at = act(onset, 15 * 60, inv, "ae", AeInput(
                    term=rng.choice(["DIZZINESS", "HEADACHE"]), location="NOT_APPLICABLE",
                    start_date=onset.isoformat(), ongoing=True, severity="SEVERE", grade="3",
                    serious="Y", criteria=("HOSPITALISATION",), relationship="UNLIKELY",
                    action="NONE", outcome="NOT_RECOVERED",
                    treatment="Admitted for observation"))
                hours = rng.randint(2, 20)
                act(onset, 15 * 60 + hours * 60 + 5, inv, "sae_reported", "serious",
                    at + timedelta(hours=hours))

    def _monitoring(self, acts, act, rng: random.Random, inv: str, day: date,
                    auto: list) -> None:
        """The monitor's visit: close the answered automatic queries, question a value now and
        then, verify every complete form; the investigator signs the casebook after."""
        forms = [(a.args[0], a.args[1], a.args[3]) for a in acts if a.kind == "form"]
        for _day, key in auto:
            act(day, 9 * 60, "monitor", "close", key, CLOSE_TEXT)
        questioned = None
        if rng.random() < self.rates.manual_query:
            candidates = [(code, form_id, item) for code, form_id, result in forms
                          for item in self.lib.get(form_id).items
                          if item.type in ("integer", "decimal") and not item.is_computed
                          and isinstance(result.values.get(item.id), str)]
            if candidates:
                questioned = rng.choice(candidates)
        minute = 10 * 60
        for code, form_id, _result in forms:
            if questioned is not None and (code, form_id) == questioned[:2]:
                continue
            act(day, minute, "monitor", "verify", code, form_id)
            minute += 1
        if questioned is not None:
            code, form_id, item = questioned
            key = ("manual", code, form_id, item.id)
            act(day, 9 * 60 + 30, "monitor", "query", code, form_id, item.id, 0,
                f"{item.label}: please confirm the value against the source document", key)
            answer_day = day + timedelta(days=2)
            if rng.random() < self.rates.correction:
                raw, result = next((a.args[2], a.args[3]) for a in reversed(acts)
                                   if a.kind == "form" and a.args[:2] == (code, form_id))
                raw2, result2 = self.fill.corrected(self.lib.get(form_id), rng, raw, result,
                                                    item)
                act(answer_day, 13 * 60 + 55, inv, "form", code, form_id, raw2, result2,
                    CORRECTION_REASON)
                act(answer_day, 14 * 60, inv, "answer", key, ANSWER_CORRECTED)
            else:
                act(answer_day, 14 * 60, inv, "answer", key, ANSWER_CONFIRMED)
            act(day + timedelta(days=3), 10 * 60, "monitor", "close", key, CLOSE_TEXT)
            act(day + timedelta(days=3), 10 * 60 + 5, "monitor", "verify", code, form_id)
        act(day + timedelta(days=4), 14 * 60, inv, "sign", SIGN_MEANING)


# --- plausible form entries that pass the forms engine -----------------------------------------
class FormFiller:
    """A complete entry for a form: each item by its type and limits (now and then outside the
    soft range), a few forms with clinical sense (eligibility, demographics, vital signs,
    NIHSS, lipids, medications, end of study). Every entry is validated by the forms engine;
    one that fails a hard check is drawn again."""

    def __init__(self, lib: FormLibrary):
        self.lib = lib

    def entry(self, form: FormDef, rng: random.Random, rates: Rates, person: _Person,
              day: date, visit: str) -> tuple[dict, FormResult]:
        for _ in range(50):
            raw: dict[str, Any] = {}
            for section in form.sections:
                if section.repeating:
                    rows = rng.choice((0, 1, 1, 2, 3))
                    raw[section.id] = [self._row(section.items, rng, rates, day)
                                       for _ in range(rows)]
                else:
                    raw.update(self._row(section.items, rng, rates, day))
            hook = getattr(self, f"_{form.id}", None)
            if hook is not None:
                hook(form, raw, rng, rates, person, day, visit)
            result = validate_form(form, raw, complete=True)
            if result.ok:
                return raw, result
        raise CrfError(f"no valid entry drawn for form {form.id}: {result.errors[:3]}")

    def corrected(self, form: FormDef, rng: random.Random, raw: dict, result: FormResult,
                  item: ItemDef) -> tuple[dict, FormResult]:
        """The entry with `item` (outside a table) changed to another plausible value."""
        old = result.values.get(item.id)
        for _ in range(50):
            value = self._number(item, rng, outlier=False)
            if value == old:
                continue
            raw2 = {**raw, item.id: value}
            result2 = validate_form(form, raw2, complete=True)
            if result2.ok and result2.values.get(item.id) != old:
                return raw2, result2
        raise CrfError(f"no other valid value drawn for {form.id}.{item.id}")

    def _row(self, items: list[ItemDef], rng: random.Random, rates: Rates,
             day: date) -> dict[str, Any]:
        return {i.id: self._value(i, rng, rates, day) for i in items if not i.is_computed}

    def _value(self, item: ItemDef, rng: random.Random, rates: Rates, day: date) -> Any:
        t = item.type
        if t in ("integer", "decimal"):
            return self._number(item, rng, outlier=rng.random() < rates.outlier)
        if t == "choice":
            return rng.choice(item.codes).code
        if t == "yes_no":
            return "Y" if rng.random() < 0.25 else "N"
        if t == "multi_choice":
            return [rng.choice(item.codes).code]
        if t == "date":
            return day.isoformat()
        if t == "partial_date":
            return f"{day.year - rng.randint(1, 12)}-{rng.randint(1, 12):02d}"
        if t == "time":
            return f"{rng.randint(8, 16):02d}:{rng.choice(('00', '10', '20', '30', '45'))}"
        if t == "datetime":
            return f"{day.isoformat()}T{rng.randint(8, 16):02d}:30"
        return rng.choice(_TEXTS)[: item.text_limit]

    @staticmethod
    def _number(item: ItemDef, rng: random.Random, *, outlier: bool) -> str:
        """A value within the soft range (the hard range without one); `outlier`: just outside
        the soft range, still within the hard limits (saved, and an automatic query)."""
        hmin, hmax, smin, smax = item.bounds
        lo = smin if smin is not None else hmin if hmin is not None else Decimal(0)
        hi = smax if smax is not None else hmax if hmax is not None else lo + 100
        places = (item.precision or 0) if item.type == "decimal" else 0
        step = Decimal(1).scaleb(-places)
        if outlier and smax is not None and (hmax is None or hmax > smax):
            lo, hi = smax + step, smax * Decimal("1.25") if hmax is None \
                else min(hmax, smax * Decimal("1.25"))
        elif outlier and smin is not None and (hmin is None or hmin < smin) and smin > 0:
            lo, hi = max(hmin or Decimal(0), smin * Decimal("0.8")), smin - step
        low = int((lo / step).to_integral_value(ROUND_CEILING))
        high = max(low, int((hi / step).to_integral_value(ROUND_FLOOR)))
        value = Decimal(rng.randint(low, high)) * step
        return f"{value:.{places}f}"

    # -- forms with clinical sense --
    def _eligibility(self, form, raw, rng, rates, person: _Person, day, visit) -> None:
        raw.update({i.id: "Y" for i in form.section("inclusion").items})
        raw.update({i.id: "N" for i in form.section("exclusion").items if i.type == "yes_no"})
        raw["SEX"] = person.sex
        if not person.eligible:
            raw[rng.choice(["EX_ENDO", "EX_PSYCH", "EX_ANX", "EX_MALIG"])] = "Y"

    def _demographics(self, form, raw, rng, rates, person: _Person, day, visit) -> None:
        raw.update(BRTHYR=str(person.birth_year), SEX=person.sex,
                   EDUYRS=str(rng.randint(8, 20)),
                   DOMHAND="R" if rng.random() < 0.88 else rng.choice(("L", "A")))
        raw["RACE"] = ["WHITE"] if rng.random() < 0.7 else raw["RACE"]
        raw["RACEOTH"] = "Mixed"

    def _vital_signs(self, form, raw, rng, rates, person: _Person, day, visit) -> None:
        sys_bp = rng.randint(112, 162)
        raw.update(SYSBP=str(sys_bp), DIABP=str(rng.randint(62, min(96, sys_bp - 25))),
                   PULSE=str(rng.randint(56, 92)),
                   TEMP=f"{rng.uniform(36.1, 37.3):.1f}",
                   WEIGHT=f"{person.weight + rng.uniform(-1.2, 1.2):.1f}",
                   HEIGHT=str(person.height))
        if rng.random() < rates.outlier * 4:
            raw["SYSBP"] = str(rng.randint(182, 196))  # above the soft limit: a query

    def _nihss(self, form, raw, rng, rates, person: _Person, day, visit) -> None:
        step = {"SCR": 0, "BL": 0, "D7": 2, "D14": 4, "FU30": 6}.get(visit, 6)
        target = max(0, person.severity - step + rng.randint(-1, 1))
        items = [i for i in form.items if not i.is_computed]
        scores = dict.fromkeys((i.id for i in items), 0)
        tops = {i.id: int(i.bounds[1] or 0) for i in items}
        while sum(scores.values()) < target and any(scores[k] < tops[k] for k in scores):
            k = rng.choice(items).id
            if scores[k] < tops[k]:
                scores[k] += 1
        raw.update({k: str(v) for k, v in scores.items()})

    def _labs(self, form, raw, rng, rates, person: _Person, day, visit) -> None:
        hdl = rng.uniform(1.0, 1.8)
        trig = rng.uniform(0.6, 1.6)
        ldl = rng.uniform(1.2, max(1.25, min(2.9, 5.1 - hdl - trig / 2.2)))
        raw.update(LBDAT=day.isoformat(), HDL=f"{hdl:.2f}", TRIG=f"{trig:.2f}",
                   LDL=f"{ldl:.2f}", CHOL=f"{ldl + hdl + trig / 2.2 + 0.05:.2f}",
                   GLUC=f"{rng.uniform(4.2, 7.4):.1f}")

    def _conmeds(self, form, raw, rng, rates, person: _Person, day, visit) -> None:
        if visit == "SCR":
            person.meds = rng.sample(_MEDS, rng.choice((0, 1, 1, 2, 2, 3, 4)))
        elif rng.random() < rates.conmed_added:
            person.meds = [*person.meds, rng.choice(_MEDS)]
        raw["medications"] = [
            {"CMTRT": name, "CMINDC": why, "CMDOSE": dose, "CMDOSU": unit, "CMROUTE": route,
             "CMDOSFRQ": freq, "CMSTDTC": f"{day.year - 1 - k % 6}-{1 + (k * 5) % 12:02d}",
             "CMONGO": "Y"} for k, (name, why, dose, unit, route, freq) in enumerate(person.meds)]

    def _medical_history(self, form, raw, rng, rates, person: _Person, day, visit) -> None:
        for item, p in (("MH_STROKE", 0.15), ("MH_HTN", 0.6), ("MH_DIAB", 0.25), ("MH_AF", 0.2)):
            raw[item] = "Y" if rng.random() < p else "N"
        for row in raw.get("conditions", []):
            row["MHTERM"] = rng.choice(_CONDITIONS)

    def _end_of_study(self, form, raw, rng, rates, person: _Person, day, visit) -> None:
        raw.update(EOSSTAT="COMPLETED", EOSDAT=day.isoformat(), EOSREAS="",
                   LSTDOSDT=person.last_dose.isoformat() if person.last_dose else "")


# --- the bulk writer: each action's rows and audit events, as its service writes them ------------
class _Form:
    __slots__ = ("code", "form_id", "id", "row_version", "status", "updated_at", "updated_by",
                 "value_ids", "values", "version", "visit_id")

    def __init__(self, fid: int, visit_id: int, code: str, form_id: str, version: int):
        self.id, self.visit_id, self.code, self.form_id, self.version = (fid, visit_id, code,
                                                                         form_id, version)
        self.status = NOT_STARTED
        self.values: dict[tuple[str, int], str] = {}
        self.value_ids: dict[tuple[str, int], int] = {}
        self.updated_at: datetime | None = None
        self.updated_by: str | None = None
        self.row_version = 1


class _Query:
    __slots__ = ("closed_at", "closed_by", "messages", "row", "row_version", "state")

    def __init__(self, row: dict):
        self.row = row
        self.state = "open"
        self.closed_at: datetime | None = None
        self.closed_by: str | None = None
        self.messages: list[tuple] = []
        self.row_version = 1


class _Subject:
    """One subject under way: its rows (kept until its story ends) and what the services would
    read back from the database."""

    def __init__(self, sid: int, e: Enrollment, site_id: int, metadata_version: int):
        self.id, self.e, self.site_id = sid, e, site_id
        self.number = e.screening_number
        self.status = SubjectStatus.SCREENING
        self.status_reason = ""
        self.status_date: date | None = None
        self.baseline: date | None = None
        self.metadata_version = metadata_version
        self.row_version = 1
        # code -> [id, sequence, planned, window_start, window_end, actual, status, deviation,
        #          row_version]
        self.visits: dict[str, list] = {}
        self.forms: dict[tuple[str, str], _Form] = {}
        self.queries: list[_Query] = []
        self.query_keys: dict[tuple, _Query] = {}
        self.doses: list[dict] = []
        self.dose_records: list[DoseRecord] = []
        self.aes: list[dict] = []
        self.verifications: dict[int, dict] = {}  # form instance id -> the open verification
        self.cleared: list[dict] = []
        self.signatures: list[dict] = []


class _Sink:
    """Rows of one table, inserted with one executemany in column order (SQLAlchemy's own
    type processors turn dates, times, timestamps, booleans and decimals into stored values)."""

    def __init__(self, conn: Connection, table: Table, skip_id: bool = False):
        columns = [c for c in table.columns if not (skip_id and c.name == "id")]
        dialect = conn.dialect
        self.names = [c.name for c in columns]
        quoted = ", ".join(f'"{n}"' for n in self.names)
        self.sql = f'INSERT INTO "{table.name}" ({quoted}) VALUES ({", ".join("?" * len(columns))})'
        self.procs = [(k, p) for k, c in enumerate(columns)
                      if (p := c.type.dialect_impl(dialect).bind_processor(dialect)) is not None]
        self.rows: list[tuple] = []
        self.count = 0

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(tuple(row[n] for n in self.names))

    def flush(self, conn: Connection) -> None:
        if not self.rows:
            return
        if not self.procs:
            out = self.rows
        else:
            out = []
            last: dict[int, tuple[Any, Any]] = {}  # rows in a row often share a timestamp
            for row in self.rows:
                values = list(row)
                for k, p in self.procs:
                    v = values[k]
                    if v is not None:
                        seen = last.get(k)
                        if seen is not None and seen[0] is v:
                            values[k] = seen[1]
                        else:
                            values[k] = p(v)
                            last[k] = (v, values[k])
                out.append(tuple(values))
        conn.exec_driver_sql(self.sql, out)
        self.count += len(out)
        self.rows = []


class _ValueRows:
    """The canonical rows signed_values_hash reads (the signature's hash of the signed values),
    served from memory: the service's own hashing, without a round trip to the database."""

    def __init__(self, rows: list[tuple]):
        self._rows = rows

    def execute(self, _statement: Any) -> _ValueRows:
        return self

    def all(self) -> list[tuple]:
        return self._rows


class BulkWriter:
    """Runs a plan's actions into the study's database: every row and audit event the services
    would write for them, inserted in bulk."""

    # audit events gathered before a flush (one transaction: the finished subjects' rows and
    # their events); CRF_GENERATE_FLUSH_EVENTS overrides it (the kill test commits often)
    FLUSH_EVENTS = int(os.environ.get("CRF_GENERATE_FLUSH_EVENTS", "60000"))

    def __init__(self, study: StudyHandle):
        self.study = study
        self.protocol = study.protocol
        self.lib = form_library(study)
        self.subjects: dict[int, _Subject] = {}
        self.events: list[tuple] = []  # the events to insert at the next flush
        # a subject's events are held until the subject is finished, then flushed with its
        # rows in one transaction: a kill at any moment leaves a study that verifies
        self.held: dict[int, list[tuple]] = {}
        self.written: dict[str, int] = {}
        self.statuses: dict[str, int] = {}
        self.last_login: dict[str, datetime] = {}

    # -- running --
    def run(self, actions: Iterator[Action], *, progress: Callable[[int, int], None] | None = None,
            total: int = 0) -> None:
        engine = self.study.db.engine
        with engine.connect() as conn:
            # a bulk load: no fsync per commit, foreign keys checked once at the end. PRAGMAs
            # go to the DBAPI connection: outside a transaction, where they take effect.
            raw = conn.connection.dbapi_connection
            assert raw is not None
            raw.execute("PRAGMA foreign_keys=OFF")
            raw.execute("PRAGMA synchronous=OFF")
            raw.execute("PRAGMA cache_size=-131072")
            try:
                self._load(conn, actions, progress, total)
                problems = raw.execute("PRAGMA foreign_key_check").fetchall()
                if problems:
                    raise CrfError(f"generated rows break foreign keys: {problems[:5]}")
                raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                raw.execute("PRAGMA foreign_keys=ON")
                raw.execute("PRAGMA synchronous=FULL")
                raw.execute("PRAGMA cache_size=-2000")

    def _load(self, conn: Connection, actions: Iterator[Action],
              progress: Callable[[int, int], None] | None, total: int) -> None:
        with conn.begin():
            self._prepare(conn)
        done = 0
        handlers = {name: getattr(self, f"_{name}") for name in (
            "enrol", "visit_date", "baseline", "form", "usual_day", "dose", "ae", "sae_reported",
            "query", "answer", "close", "verify", "sign", "end")}
        for action in actions:
            if action.kind == "done":
                finished = self.subjects.pop(action.subject)
                self.events.extend(self.held.pop(finished.id))
                self._finish(finished)
                done += 1
                if len(self.events) >= self.FLUSH_EVENTS:
                    with conn.begin():
                        self._flush(conn)
                    if progress is not None:
                        progress(done, total)
                continue
            handlers[action.kind](action, self.subjects.get(action.subject))
        for left in self.subjects.values():  # (a plan ends every subject's story; if not)
            self.events.extend(self.held.pop(left.id))
            self._finish(left)
        self.subjects.clear()
        with conn.begin():
            self._flush(conn)
            for username, at in self.last_login.items():
                conn.execute(update(User).where(User.username == username)
                             .values(last_login_at=at))
        if progress is not None:
            progress(done, total)
        self.written = {name: sink.count for name, sink in self.sinks.items()}

    def _prepare(self, conn: Connection) -> None:
        tables = [Subject, Visit, FormInstance, ItemValue, Query, QueryMessage, DosingRecord,
                  AdverseEvent, Verification, Signature]
        self.sinks = {m.__tablename__: _Sink(conn, m.__table__) for m in tables}
        self.sinks["audit_event"] = _Sink(conn, AuditEvent.__table__, skip_id=True)
        self.ids = {m.__tablename__: (conn.execute(select(func.max(m.id))).scalar() or 0)
                    for m in tables}
        self.prev_hash = conn.execute(select(AuditEvent.hash).order_by(AuditEvent.id.desc())
                                      .limit(1)).scalar() or GENESIS_HASH
        self.users = {u.username: (u.id, u.full_name) for u in conn.execute(
            select(User.id, User.username, User.full_name))}
        self.site_ids = {code: sid for sid, code in conn.execute(
            select(Site.id, Site.code).where(Site.study_id == self.study.study_id))}

    def _next(self, table: str) -> int:
        self.ids[table] += 1
        return self.ids[table]

    def _flush(self, conn: Connection) -> None:
        rows, self.prev_hash = chain_events(self.prev_hash, self.events)
        self.events = []
        sink = self.sinks["audit_event"]
        sink.rows = rows
        for s in self.sinks.values():
            s.flush(conn)

    # -- audit events, as AuditWriter.record / record_fields / record_many write them --
    def _event(self, a: Action, action: str, entity: str, entity_id: object, fld: str = "",
               old: object = None, new: object = None, reason: str = "",
               subject_id: int | None = None) -> None:
        uid = self.users[a.user][0]
        held = self.held.get(subject_id) if subject_id is not None else None
        (self.events if held is None else held).append(
            (a.at, uid, a.user, action, entity, entity_id, fld, old, new, reason, subject_id))

    def _fields(self, a: Action, action: str, entity: str, entity_id: object,
                changes: list[tuple[str, object, object]], reason: str,
                subject_id: int | None) -> None:
        for fld, old, new in changes:
            if value_text(old) != value_text(new):
                self._event(a, action, entity, entity_id, fld, old, new, reason, subject_id)

    @staticmethod
    def _today(a: Action) -> date:
        return a.at.astimezone().date()

    # -- subjects and visits (services.subjects) --
    def _enrol(self, a: Action, _s: None) -> None:
        e: Enrollment = a.args[0]
        errors = check_enrollment(e, self.protocol, self._today(a))
        if errors:
            raise CrfError(f"generated enrolment refused: {errors}")
        s = _Subject(self._next("subject"), e, self.site_ids[e.site],
                     self.study.metadata_version)
        self.subjects[a.subject] = s
        self.held[s.id] = []
        self._fields(a, "create", "subject", s.number, [
            ("site", None, e.site), ("initials", None, e.initials),
            ("birth_year", None, e.birth_year), ("sex", None, e.sex), ("arm", None, e.arm),
            ("consent_date", None, e.consent_date), ("enrolled_on", None, e.enrolled_on),
            ("baseline_date", None, e.baseline_date), ("status", None, s.status)], "", s.id)
        for pv in schedule(self.protocol, e.baseline_date):
            s.visits[pv.code] = [self._next("visit"), pv.sequence, pv.planned, pv.window_start,
                                 pv.window_end, None, "planned", "", 1]

    def _visit_date(self, a: Action, s: _Subject) -> None:
        code, actual = a.args
        if s.status not in SubjectStatus.ACTIVE or not s.e.consent_date <= actual \
                <= self._today(a):
            raise CrfError(f"generated visit date refused: {s.number} {code} {actual}")
        v = s.visits[code]
        deviation = window_deviation(actual, v[3], v[4])
        self._fields(a, "update", "visit", visit_address(s.number, code), [
            ("actual_date", v[5], actual), ("status", v[6], "done"),
            ("deviation", v[7], deviation)], "", s.id)
        if (v[5], v[6], v[7]) != (actual, "done", deviation):
            v[8] += 1
        v[5], v[6], v[7] = actual, "done", deviation

    def _baseline(self, a: Action, s: _Subject) -> None:
        (baseline,) = a.args
        errors = check_baseline(baseline, s.e.consent_date, self._today(a))
        if errors or s.status not in SubjectStatus.ACTIVE:
            raise CrfError(f"generated baseline refused: {errors or s.status}")
        self._fields(a, "update", "subject", s.number, [
            ("baseline_date", s.baseline, baseline),
            ("status", s.status, SubjectStatus.ON_STUDY)], "", s.id)
        if (s.baseline, s.status) != (baseline, SubjectStatus.ON_STUDY):
            s.row_version += 1
        s.baseline, s.status = baseline, SubjectStatus.ON_STUDY
        planned = {pv.code: pv for pv in schedule(self.protocol, baseline)}
        for code, v in sorted(s.visits.items(), key=lambda kv: kv[1][1]):
            pv = planned[code]
            deviation = window_deviation(v[5], pv.window_start, pv.window_end) if v[5] else ""
            self._fields(a, "update", "visit", visit_address(s.number, code), [
                ("planned_date", v[2], pv.planned), ("deviation", v[7], deviation)],
                "schedule computed from baseline date", s.id)
            new = (pv.planned, pv.window_start, pv.window_end, deviation)
            if (v[2], v[3], v[4], v[7]) != new:
                v[8] += 1
            v[2], v[3], v[4], v[7] = new

    _ENDS_FROM = {SubjectStatus.WITHDRAWN: SubjectStatus.ACTIVE,
                  SubjectStatus.COMPLETED: frozenset({SubjectStatus.ON_STUDY})}

    def _end(self, a: Action, s: _Subject) -> None:
        status, on, reason = a.args
        if s.status not in self._ENDS_FROM[status] or on > self._today(a):
            raise CrfError(f"generated end of participation refused: {s.number} {s.status} "
                           f"-> {status}")
        self._fields(a, "update", "subject", s.number, [
            ("status", s.status, status), ("status_date", s.status_date, on),
            ("status_reason", s.status_reason or None, reason)], reason, s.id)
        s.status, s.status_date, s.status_reason = status, on, reason
        s.row_version += 1

    # -- forms (services.forms.save_form, signoff.on_data_changed, queries.sync_auto_queries) --
    def _form(self, a: Action, s: _Subject) -> None:
        code, form_id, _raw, result, reason = a.args
        form = self.lib.get(form_id)
        if not result.ok:
            raise CrfError(f"generated {form_id} entry refused: {result.errors}")
        v = s.visits[code]
        fi = s.forms.get((code, form_id))
        new_form = fi is None
        if fi is None:
            fi = _Form(self._next("form_instance"), v[0], code, form_id, form.version)
            s.forms[(code, form_id)] = fi
        old = fi.values
        new = flatten(form, result.values)
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        if any(k in old for k in changed) and not reason:
            raise CrfError("a generated correction has no reason for change")
        label = form_address(s.number, code, form_id)
        for key in changed:
            item_id, row = key
            before, after = old.get(key), new.get(key)
            table = form.section_of(item_id).repeating
            self._event(a, "update" if before is not None else "create", "item",
                        item_address(s.number, code, form_id, item_id, row if table else None),
                        item_id,
                        before, after, reason if before is not None else "", s.id)
            if after is None:
                del old[key]
                del fi.value_ids[key]
            else:
                if before is None:
                    fi.value_ids[key] = self._next("item_value")
                old[key] = after
        status = COMPLETE
        if fi.status != status:
            self._event(a, "update", "form", label, "status", fi.status, status, reason, s.id)
        if changed or status != fi.status:
            self._data_changed(a, s, fi, new_form)
        fi.status, fi.updated_at, fi.updated_by = status, a.at, a.user
        fi.row_version += 1
        self._auto_queries(a, s, v, fi, result, new_form)
        rule = self.protocol.eligibility
        if rule is not None and form.id == rule.form and \
                result.values.get(rule.item) == "N" and s.status == SubjectStatus.SCREENING:
            reason_text = "Not eligible (eligibility form)"
            self._fields(a, "update", "subject", s.number, [
                ("status", s.status, SubjectStatus.SCREEN_FAILED),
                ("status_reason", s.status_reason or None, reason_text)],
                "eligibility criteria not met", s.id)
            s.status, s.status_reason = SubjectStatus.SCREEN_FAILED, reason_text
            s.status_date = self._today(a)
            s.row_version += 1

    def _data_changed(self, a: Action, s: _Subject, fi: _Form, new_form: bool) -> None:
        ver = None if new_form else s.verifications.pop(fi.id, None)
        if ver is not None:
            ver["cleared_at"], ver["cleared_reason"] = a.at, "data changed after verification"
            s.cleared.append(ver)
            self._event(a, "update", "verification", ver["id"], "state", "verified", "cleared",
                        "data changed after verification", s.id)
        for sig in s.signatures:
            if sig["state"] == "valid" and (sig["form_instance_id"] == fi.id or
                                            sig["visit_id"] == fi.visit_id or
                                            sig["scope"] == "casebook"):
                sig["state"], sig["invalidated_at"] = "invalidated", a.at
                sig["invalidated_reason"] = "signed data changed"
                self._event(a, "update", "signature", sig["id"], "state", "valid",
                            "invalidated", "signed data changed", s.id)

    def _auto_queries(self, a: Action, s: _Subject, v: list, fi: _Form, result: FormResult,
                      new_form: bool) -> None:
        wanted = {(w.item_id, w.row if w.row is not None else 0, w.rule): w
                  for w in result.warnings}
        existing = {} if new_form else {
            (q.row["item_id"], q.row["row_index"], q.row["rule"]): q for q in s.queries
            if q.row["form_instance_id"] == fi.id and q.row["origin"] == "auto"
            and q.state != "closed"}
        for key, warning in wanted.items():
            if key in existing:
                continue
            q = self._new_query(a, s, EDIT_CHECK_SYSTEM, visit_id=v[0], form_instance_id=fi.id,
                                item_id=key[0], row_index=key[1], target="item", origin="auto",
                                rule=key[2], text=warning.message)
            s.query_keys[("auto", fi.code, fi.form_id, *key)] = q
        for key, q in existing.items():
            if key in wanted:
                continue
            self._close_auto(a, s, q, EDIT_CHECK_SYSTEM,
                             "Closed automatically: the corrected value passes the check")

    def _new_query(self, a: Action, s: _Subject, by: str, *, text: str, **row: Any) -> _Query:
        q = _Query({"id": self._next("query"), "subject_id": s.id, **row})
        q.row["opened_at"], q.row["opened_by"] = a.at, by
        q.messages.append((self._next("query_message"), a.at, by, "open", text))
        s.queries.append(q)
        self._event(a, "create", "query", q.row["id"], "state", None, "open", text, s.id)
        return q

    def _close_auto(self, a: Action, s: _Subject, q: _Query, by: str, text: str) -> None:
        q.messages.append((self._next("query_message"), a.at, by, "close", text))
        self._event(a, "update", "query", q.row["id"], "state", q.state, "closed", text, s.id)
        q.state, q.closed_at, q.closed_by = "closed", a.at, by
        q.row_version += 1

    # -- queries, verification, signatures (services.queries, services.signoff) --
    def _query(self, a: Action, s: _Subject) -> None:
        code, form_id, item_id, row, text, key = a.args
        fi = s.forms[(code, form_id)]
        q = self._new_query(a, s, a.user, visit_id=fi.visit_id, form_instance_id=fi.id,
                            item_id=item_id, row_index=row,
                            target="item" if item_id else "form", origin="manual", rule="",
                            text=text)
        s.query_keys[key] = q

    def _transition(self, a: Action, s: _Subject, kind: str, to_state: str) -> None:
        key, text = a.args
        q = s.query_keys[key]
        q.messages.append((self._next("query_message"), a.at, a.user, kind, text))
        self._event(a, "update", "query", q.row["id"], "state", q.state, to_state, text, s.id)
        q.state = to_state
        q.closed_at, q.closed_by = (a.at, a.user) if to_state == "closed" else (None, None)
        q.row_version += 1

    def _answer(self, a: Action, s: _Subject) -> None:
        if s.query_keys[a.args[0]].state == "open":
            self._transition(a, s, "answer", "answered")

    def _close(self, a: Action, s: _Subject) -> None:
        if s.query_keys[a.args[0]].state in ("open", "answered"):
            self._transition(a, s, "close", "closed")

    def _verify(self, a: Action, s: _Subject) -> None:
        code, form_id = a.args
        fi = s.forms[(code, form_id)]
        if fi.status != COMPLETE or fi.id in s.verifications:
            raise CrfError(f"{s.number}/{code}/{form_id} cannot be verified now")
        ver = {"id": self._next("verification"), "form_instance_id": fi.id, "subject_id": s.id,
               "verified_at": a.at, "verified_by": a.user, "cleared_at": None,
               "cleared_reason": ""}
        s.verifications[fi.id] = ver
        self._event(a, "create", "verification", ver["id"], "state", None, "verified",
                    form_address(s.number, code, form_id), s.id)

    def _sign(self, a: Action, s: _Subject) -> None:
        (meaning,) = a.args
        forms = [fi for fi in s.forms.values() if fi.status == COMPLETE]
        # signing re-authenticates: a login of the investigator first (accounts.login)
        self._event(a, "login", "user", a.user)
        self.last_login[a.user] = a.at
        # the rows signed_values_hash selects, in its order (form, item, row)
        rows = [(fi.id, fi.form_id, fi.version, item, row, value)
                for fi in forms for (item, row), value in fi.values.items()]
        rows += [(fi.id, fi.form_id, fi.version, None, None, None) for fi in forms
                 if not fi.values]
        rows.sort(key=lambda r: (r[0], r[3] or "", -1 if r[4] is None else r[4]))
        values_hash = signed_values_hash(_ValueRows(rows), s.id, [fi.id for fi in forms])
        uid, full_name = self.users[a.user]
        sig = {"id": self._next("signature"), "subject_id": s.id, "scope": "casebook",
               "visit_id": None, "form_instance_id": None, "user_id": uid,
               "username": a.user, "printed_name": full_name, "meaning": meaning,
               "signed_at": a.at, "values_hash": values_hash, "forms_signed": len(forms),
               "state": "valid", "invalidated_at": None, "invalidated_reason": ""}
        s.signatures.append(sig)
        self._event(a, "create", "signature", sig["id"], "meaning", None, meaning,
                    f"casebook of {s.number}: {len(forms)} forms, sha256 {values_hash[:16]}…",
                    s.id)

    # -- dosing (services.dosing) --
    def _usual_day(self, a: Action, s: _Subject) -> None:
        day, start, lot = a.args
        if any(r.date == day for r in s.dose_records):
            raise CrfError(f"{s.number}: {day} already has dosing records")
        for raw in usual_day(self._regimen(s), day, start, lot=lot, given_by="SELF"):
            self._insert_dose(a, s, raw, "")

    def _dose(self, a: Action, s: _Subject) -> None:
        raw, key = a.args
        self._insert_dose(a, s, raw, key)

    def _regimen(self, s: _Subject):
        return self.protocol.regimen(self.protocol.arm(s.e.arm).regimen)

    def _insert_dose(self, a: Action, s: _Subject, raw: DoseInput, key: str) -> None:
        result = validate_dose(raw, DoseContext(self._regimen(s), s.baseline is not None,
                                                s.baseline, s.dose_records, self._today(a)))
        rec = result.value
        if rec is None:
            raise CrfError(f"generated dose refused: {result.errors}")
        findings = ",".join(f.rule for f in result.findings)
        row = {"id": self._next("dosing_record"), "subject_id": s.id, "dose_date": rec.date,
               "dose_time": rec.time, "dose_mg": rec.dose_mg, "dose_unit": "mg",
               "instillations": rec.instillations, "nostril": rec.nostril, "route": rec.route,
               "lot": rec.lot, "given_by": rec.given_by, "missed": rec.missed,
               "missed_reason": rec.missed_reason, "findings": findings,
               "warnings": ",".join(w.rule for w in result.warnings), "created_at": a.at,
               "created_by": a.user, "updated_at": a.at, "updated_by": a.user,
               "row_version": 1}
        s.doses.append(row)
        values = [("date", rec.date), ("time", rec.time), ("dose_mg", rec.dose_mg),
                  ("instillations", rec.instillations), ("nostril", rec.nostril),
                  ("route", rec.route), ("lot", rec.lot), ("given_by", rec.given_by),
                  ("missed", rec.missed), ("missed_reason", rec.missed_reason)]
        self._fields(a, "create", "dose", dose_address(s.number, row["id"]),
                     [(f, None, None if v == "" else v) for f, v in values]
                     + [("findings", None, findings or None)], "", s.id)
        wanted = {(f.field, f.rule): f for f in result.findings}
        for (item_id, rule), finding in wanted.items():
            q = self._new_query(a, s, DOSE_SYSTEM, visit_id=None, form_instance_id=None,
                                item_id=item_id, row_index=row["id"], target=DOSE_TARGET,
                                origin="auto", rule=rule, text=finding.message)
            if key:
                s.query_keys[("dose", key, rule)] = q
        s.dose_records.append(rec)

    # -- adverse events (services.adverse_events) --
    _AE_FIELDS = ("term", "verbatim", "location", "start_date", "start_time", "end_date",
                  "ongoing", "severity", "grade", "serious", "criteria", "relationship",
                  "action", "outcome", "treatment")

    def _ae(self, a: Action, s: _Subject) -> None:
        (raw,) = a.args
        last_dose = max((r.date for r in s.dose_records if not r.missed), default=None)
        result = check_ae(raw, AeContext(s.e.consent_date, last_dose, s.status,
                                         self._today(a)), True)
        value = result.value
        if value is None:
            raise CrfError(f"generated adverse event refused: {result.errors}")
        seq = len(s.aes) + 1
        flags = ",".join(f.rule for f in result.flags)
        row = {"id": self._next("adverse_event"), "subject_id": s.id, "sequence": seq,
               **{f: getattr(value, f) for f in self._AE_FIELDS
                  if f not in ("criteria", "relationship")},
               "relationship": value.relationship or None,
               **{col: code in value.criteria for code, col in CRITERIA_COLUMNS.items()},
               "flags": flags, "flag_text": "\n".join(f.message for f in result.flags),
               "sae_recorded_at": a.at if value.serious else None, "sae_reported_at": None,
               "created_at": a.at, "created_by": a.user, "updated_at": a.at,
               "updated_by": a.user, "row_version": 1}
        s.aes.append(row)
        wanted = {f: getattr(value, f) for f in self._AE_FIELDS if f != "criteria"}
        wanted["criteria"] = ",".join(value.criteria) or None
        wanted["relationship"] = value.relationship or None
        self._fields(a, "create", "adverse_event", ae_address(s.number, seq),
                     [(f, None, None if v == "" else v) for f, v in wanted.items()]
                     + [("flags", None, flags or None),
                        ("sae_recorded_at", None, row["sae_recorded_at"])], "", s.id)

    def _sae_reported(self, a: Action, s: _Subject) -> None:
        _which, reported_at = a.args
        ae = next(r for r in reversed(s.aes) if r["serious"])
        if ae["sae_reported_at"] != reported_at:
            self._fields(a, "update", "adverse_event", ae_address(s.number, ae["sequence"]),
                         [("sae_reported_at", ae["sae_reported_at"], reported_at)], "", s.id)
            ae["sae_reported_at"] = reported_at
            ae["updated_at"], ae["updated_by"] = a.at, a.user
            ae["row_version"] += 1

    # -- a subject's story is over: its rows go to the tables --
    def _finish(self, s: _Subject) -> None:
        sinks = self.sinks
        e = s.e
        self.statuses[s.status] = self.statuses.get(s.status, 0) + 1
        sinks["subject"].add({
            "id": s.id, "study_id": self.study.study_id, "site_id": s.site_id,
            "screening_number": s.number, "initials": e.initials, "birth_year": e.birth_year,
            "sex": e.sex, "arm": e.arm, "consent_date": e.consent_date,
            "enrolled_on": e.enrolled_on, "baseline_date": s.baseline, "status": s.status,
            "status_reason": s.status_reason, "status_date": s.status_date,
            "metadata_version": s.metadata_version, "row_version": s.row_version})
        for code, v in s.visits.items():
            sinks["visit"].add({
                "id": v[0], "subject_id": s.id, "visit_code": code, "sequence": v[1],
                "planned_date": v[2], "window_start": v[3], "window_end": v[4],
                "actual_date": v[5], "status": v[6], "deviation": v[7], "row_version": v[8]})
        values = sinks["item_value"].rows
        for fi in s.forms.values():
            sinks["form_instance"].add({
                "id": fi.id, "visit_id": fi.visit_id, "form_id": fi.form_id,
                "form_version": fi.version, "status": fi.status, "updated_at": fi.updated_at,
                "updated_by": fi.updated_by, "row_version": fi.row_version})
            ids = fi.value_ids
            values.extend((ids[key], fi.id, key[0], key[1], value)
                          for key, value in fi.values.items())
        for q in s.queries:
            sinks["query"].add({**q.row, "state": q.state, "closed_at": q.closed_at,
                                "closed_by": q.closed_by, "row_version": q.row_version})
            for mid, at, by, kind, text in q.messages:
                sinks["query_message"].add({"id": mid, "query_id": q.row["id"], "at": at,
                                            "by": by, "kind": kind, "text": text})
        for row in s.doses:
            sinks["dosing_record"].add(row)
        for row in s.aes:
            sinks["adverse_event"].add(row)
        for ver in (*s.cleared, *s.verifications.values()):
            sinks["verification"].add(ver)
        for sig in s.signatures:
            sinks["signature"].add(sig)


# --- the reference: the same actions through the services ---------------------------------------
def run_with_services(study: StudyHandle, actions: Iterator[Action] | list[Action]) -> None:
    """The same actions through the services, one call each as the GUI makes them: the
    reference the bulk writer is checked against (tests/services/test_generate.py), and the
    baseline of its speed (benchmarks/bench_generate.py). Slow: 5–10 ms per save."""
    from crf_app.services import adverse_events, dosing, forms, queries, signoff, subjects
    from crf_app.services.context import CurrentUser, UserContext

    with study.db.reading() as s:
        users = {u.username: CurrentUser(u.id, u.username, u.full_name, Role(u.role), code)
                 for u, code in s.execute(select(User, Site.code)
                                          .outerjoin(Site, User.site_id == Site.id))}
    ids: dict[int, int] = {}

    def visit(sid: int, code: str) -> int:
        with study.db.reading() as s:
            return s.execute(select(Visit.id).where(Visit.subject_id == sid,
                                                    Visit.visit_code == code)).scalar_one()

    def query_id(sid: int, key: tuple) -> Query:
        q = select(Query).where(Query.subject_id == sid).order_by(Query.id.desc())
        if key[0] == "dose":
            day = date.fromisoformat(key[1].removeprefix("dose-"))
            q = q.where(Query.target == "dose", Query.rule == key[2], Query.row_index.in_(
                select(DosingRecord.id).where(DosingRecord.subject_id == sid,
                                              DosingRecord.dose_date == day)))
        else:
            q = q.join(FormInstance, Query.form_instance_id == FormInstance.id).join(
                Visit, FormInstance.visit_id == Visit.id).where(
                Visit.visit_code == key[1], FormInstance.form_id == key[2],
                Query.item_id == key[3], Query.origin == key[0])
            if key[0] == "auto":
                q = q.where(Query.row_index == key[4], Query.rule == key[5])
        with study.db.reading() as s:
            return s.execute(q.limit(1)).scalar_one()

    for a in actions:
        if a.kind == "done":
            continue
        ctx = UserContext(study, users[a.user], clock=lambda at=a.at: at)
        sid = ids.get(a.subject)
        args = a.args
        if a.kind == "enrol":
            ids[a.subject] = subjects.enroll_subject(ctx, args[0])
        elif a.kind == "visit_date":
            subjects.record_visit_date(ctx, visit(sid, args[0]), args[1])
        elif a.kind == "baseline":
            subjects.set_baseline(ctx, sid, args[0])
        elif a.kind == "end":
            subjects.end_participation(ctx, sid, *args)
        elif a.kind == "form":
            code, form_id, raw, _result, reason = args
            forms.save_form(ctx, visit(sid, code), form_id, raw, complete=True, reason=reason)
        elif a.kind == "usual_day":
            dosing.record_usual_day(ctx, sid, args[0], args[1], args[2])
        elif a.kind == "dose":
            dosing.record_dose(ctx, sid, args[0])
        elif a.kind == "ae":
            adverse_events.record_adverse_event(ctx, sid, args[0])
        elif a.kind == "sae_reported":
            with study.db.reading() as s:
                ae_id = s.execute(select(AdverseEvent.id).where(
                    AdverseEvent.subject_id == sid, AdverseEvent.serious.is_(True))
                    .order_by(AdverseEvent.id.desc())).scalars().first()
            adverse_events.mark_sae_reported(ctx, ae_id, args[1])
        elif a.kind == "query":
            code, form_id, item_id, row, text, _key = args
            queries.raise_query(ctx, visit(sid, code), form_id, item_id, text, row)
        elif a.kind in ("answer", "close"):
            q = query_id(sid, args[0])
            if a.kind == "answer" and q.state == "open":
                queries.answer_query(ctx, q.id, args[1])
            elif a.kind == "close" and q.state in ("open", "answered"):
                queries.close_query(ctx, q.id, args[1])
        elif a.kind == "verify":
            signoff.verify_form(ctx, visit(sid, args[0]), args[1])
        elif a.kind == "sign":
            signoff.sign(ctx, sid, scope="casebook", password=DEMO_PASSWORD, meaning=args[0])
        else:
            raise AssertionError(a.kind)
