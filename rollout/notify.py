"""Webhook notifications when a rollout is promoted, rolled back, aborted or paused.

Why in the background: a notification is a courtesy to humans, never part of the decision. The
controller's ``on_transition`` callback only puts the event on a queue (it never waits on the
network); one worker thread delivers it, retrying with exponential backoff and jitter on
transport errors, 408, 429 (honouring ``Retry-After``) and 5xx, and gives up after
``maxAttempts`` with a warning. A receiver that is down, slow or rejecting changes nothing about
the rollout: the status is persisted before the callback runs, and a full queue drops the
notification rather than block.

Why no secrets in logs: a Slack incoming-webhook URL *is* the credential. Logs name a webhook
by its ``name`` and the URL's scheme and host only; header values and the URL are scrubbed
from any error text; response bodies are never logged. Policies can keep both out of the file
(``urlEnv``, ``headersFromEnv``).

At least once, de-duplicated by transition id: the controller saves a transition *before* it
notifies, so a kill in between would lose the event; ``rollout resume``/``abort`` therefore
re-announce the last recorded transition (:meth:`Notifier.redeliver`). Every request carries
the transition's id (``ROLLOUT/GENERATION``) in an ``Idempotency-Key`` header (and as ``id``
in JSON payloads), so a receiver drops the rare duplicate; one process never queues an id twice.

Payloads: ``format: json`` posts the event as a JSON object (``event``, ``rollout``, ``phase``,
``previous_phase``, ``step``, ``generation``, ``reason``, ``verdicts``, ``weights``, ``at``);
``format: slack`` posts Slack's incoming-webhook shape (``text`` plus ``blocks``), which
Mattermost, Rocket.Chat and most chat tools accept too.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from rollout.machine import Observation, Phase, RolloutStatus

__all__ = [
    "Delivery",
    "Notifier",
    "NotifyEvent",
    "NotifySpec",
    "WebhookSpec",
    "event_for",
    "payload",
    "transition_id",
]

_log = logging.getLogger("rollout.notify")


class NotifyEvent(StrEnum):
    """What a webhook can be told about."""

    promoted = "promoted"
    rolled_back = "rolledBack"
    aborted = "aborted"
    paused = "paused"
    rollback_stuck = "rollbackStuck"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, alias_generator=to_camel,
                              frozen=True)


class WebhookSpec(_Model):
    """One receiver: where, in which format, for which events, how persistently."""

    name: str = Field("webhook", min_length=1, description="Names the webhook in logs.")
    url: str | None = Field(None, pattern=r"^https?://", description=(
        "Receiver URL. A Slack webhook URL is a secret: prefer urlEnv."))
    url_env: str | None = Field(None, min_length=1, description=(
        "Environment variable holding the receiver URL (read when the rollout starts)."))
    format: Literal["json", "slack"] = Field("json", description=(
        "json: the event as a JSON object; slack: Slack's incoming-webhook text + blocks."))
    events: list[NotifyEvent] = Field(default_factory=lambda: list(NotifyEvent), description=(
        "Events to send (default: all)."))
    headers: dict[str, str] = Field(default_factory=dict, description=(
        "Extra request headers (values are never logged)."))
    headers_from_env: dict[str, str] = Field(default_factory=dict, description=(
        "Header name -> environment variable holding its value (e.g. Authorization)."))
    timeout_seconds: float = Field(5.0, gt=0, description="Per-attempt timeout.")
    max_attempts: int = Field(5, ge=1, le=20, description="Attempts before giving up.")
    backoff_seconds: float = Field(1.0, gt=0, description=(
        "Delay before the first retry; doubled for each further one (with jitter)."))
    max_backoff_seconds: float = Field(30.0, gt=0, description="Cap of one retry delay.")

    @model_validator(mode="after")
    def _one_url(self) -> WebhookSpec:
        if (self.url is None) == (self.url_env is None):
            raise ValueError("give exactly one of url and urlEnv")
        return self


class NotifySpec(_Model):
    """The policy's ``notify`` block: webhooks told about promotions, rollbacks and pauses."""

    webhooks: list[WebhookSpec] = Field(default_factory=list)


def event_for(prev: RolloutStatus, nxt: RolloutStatus) -> NotifyEvent | None:
    """The event a transition is worth telling people about, if any.

    A rollback is reported when traffic is back on blue (``RolledBack``), or when the router
    refused it ``maxRollbackAttempts`` times in a row (``rollbackStuck``: a human must act).
    """
    if nxt.phase is not prev.phase:
        match nxt.phase:
            case Phase.PROMOTED:
                return NotifyEvent.promoted
            case Phase.ROLLED_BACK:
                return NotifyEvent.rolled_back
            case Phase.ABORTED:
                return NotifyEvent.aborted
            case Phase.PAUSED:
                return NotifyEvent.paused
    limit = nxt.plan.max_rollback_attempts
    if nxt.phase is Phase.ROLLING_BACK and prev.rollback_attempts < limit <= \
            nxt.rollback_attempts:
        return NotifyEvent.rollback_stuck
    return None


_HEADLINE = {
    NotifyEvent.promoted: (":white_check_mark:", "promoted: all traffic on green"),
    NotifyEvent.rolled_back: (":rewind:", "rolled back: all traffic on blue"),
    NotifyEvent.aborted: (":octagonal_sign:", "aborted: all traffic on blue"),
    NotifyEvent.paused: (":pause_button:", "paused: a human decides (rollout resume / "
                                           "rollout rollback)"),
    NotifyEvent.rollback_stuck: (":rotating_light:", "rollback NOT applied: the router refused "
                                                     "it; traffic may still reach green"),
}


def transition_id(status: RolloutStatus) -> str:
    """The id of the transition that produced ``status`` (unique per rollout name)."""
    return f"{status.name}/{status.generation}"


def payload(event: NotifyEvent, prev: RolloutStatus, nxt: RolloutStatus, *,
            fmt: Literal["json", "slack"], at: float | None = None,
            labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The request body for one event in ``fmt``.

    ``labels`` (the policy's ``metadata.labels``) are copied into the JSON payload as
    ``labels`` (always present, ``{}`` without any) and listed in the Slack message's context.
    """
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at or time.time()))
    weights = nxt.weights.model_dump() if nxt.weights else None
    tags = dict(labels or {})
    if fmt == "json":
        return {"id": transition_id(nxt), "event": event.value, "rollout": nxt.name,
                "labels": tags, "phase": nxt.phase.value,
                "previous_phase": prev.phase.value, "step": nxt.step,
                "generation": nxt.generation, "reason": nxt.reason,
                "verdicts": dict(nxt.verdicts), "weights": weights, "at": when}
    emoji, headline = _HEADLINE[event]
    text = f"{emoji} Rollout *{nxt.name}* {headline}"
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": text}},
        {"type": "section", "text": {"type": "mrkdwn", "text": f"*Why:* {nxt.reason}"[:2900]}},
    ]
    if nxt.verdicts:
        blocks.append({"type": "section", "fields": [
            {"type": "mrkdwn", "text": f"*{gate}*\n{verdict}"}
            for gate, verdict in list(nxt.verdicts.items())[:10]]})
    w = f"blue {weights['blue']}% / green {weights['green']}%" if weights else "unknown"
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": (
        f"{prev.phase.value} → {nxt.phase.value} · step {nxt.step} · generation "
        f"{nxt.generation} · weights {w} · {when}"
        + "".join(f" · {k}={v}" for k, v in tags.items()))}]})
    return {"text": f"{text}: {nxt.reason}"[:3000], "blocks": blocks}


@dataclass(frozen=True)
class Delivery:
    """How one notification ended (kept on :attr:`Notifier.deliveries`)."""

    webhook: str
    event: NotifyEvent
    rollout: str
    ok: bool
    attempts: int
    status: int | None
    error: str | None


@dataclass(frozen=True)
class _Target:
    spec: WebhookSpec
    url: str
    headers: dict[str, str]

    @property
    def where(self) -> str:
        """Scheme and host only: the rest of a webhook URL may be its secret."""
        u = urlsplit(self.url)
        return f"{self.spec.name} ({u.scheme}://{u.hostname}{f':{u.port}' if u.port else ''})"

    def scrub(self, text: str) -> str:
        for secret in (self.url, urlsplit(self.url).path, *self.headers.values()):
            if len(secret) > 1:
                text = text.replace(secret, "***")
        return text


_RETRY_STATUS = frozenset({408, 429})
#: A queued notification; ``None`` tells the worker to stop.
_Item = tuple[_Target, NotifyEvent, str, dict[str, Any], str] | None


class Notifier:
    """Delivers notifications from a background thread; use it as ``on_transition``.

    Args:
        webhooks: the receivers (a notifier without any does nothing).
        env: where ``urlEnv`` / ``headersFromEnv`` are looked up.
        transport: httpx transport (tests).
        rng: jitter source in [0, 1).
        queue_size: events waiting at most; more are dropped with a warning.
        labels: the policy's ``metadata.labels``, copied into every payload (:func:`payload`).

    A webhook whose ``urlEnv`` or header variable is unset is skipped with a warning at
    construction (the rollout still runs).
    """

    def __init__(self, webhooks: Sequence[WebhookSpec] = (), *,
                 env: Mapping[str, str] | None = None,
                 transport: httpx.BaseTransport | None = None,
                 rng: Callable[[], float] = random.random, queue_size: int = 100,
                 labels: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self.labels = dict(labels or {})
        self.targets: list[_Target] = []
        for spec in webhooks:
            target = _resolve(spec, env)
            if target is not None:
                self.targets.append(target)
        self.transport = transport
        self.rng = rng
        self.deliveries: list[Delivery] = []
        self._queue: queue.Queue[_Item] = queue.Queue(maxsize=queue_size)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._queued: set[str] = set()

    @classmethod
    def from_spec(cls, spec: NotifySpec | None, **kw: Any) -> Notifier:
        """A notifier for a policy's ``notify`` block (``None``: no webhooks).

        Pass ``labels=policy.metadata.labels`` so every payload carries them.
        """
        return cls(spec.webhooks if spec is not None else (), **kw)

    def __call__(self, prev: RolloutStatus, nxt: RolloutStatus, obs: Observation) -> None:
        """Queue the transition's event for every webhook that wants it; never blocks."""
        event = event_for(prev, nxt)
        if event is None or transition_id(nxt) in self._queued:
            return
        self._queued.add(transition_id(nxt))
        for target in self.targets:
            if event not in target.spec.events:
                continue
            body = payload(event, prev, nxt, fmt=target.spec.format, labels=self.labels)
            try:
                self._queue.put_nowait((target, event, nxt.name, body, transition_id(nxt)))
            except queue.Full:
                _log.warning("notification %s of rollout %s to %s dropped: queue full",
                             event.value, nxt.name, target.where)
                continue
            self._start()

    def redeliver(self, previous_phase: str | None, status: RolloutStatus) -> None:
        """Announce again the transition that produced ``status`` (from ``previous_phase``):
        the process that saved it may have died before notifying (at least once)."""
        if previous_phase is None:
            return
        prev = status.model_copy(update={"phase": Phase(previous_phase)})
        self(prev, status, Observation())

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="rollout-notify",
                                                daemon=True)
                self._thread.start()

    def close(self, timeout: float = 10.0) -> bool:
        """Wait up to ``timeout`` seconds for queued notifications; True if all were handled.

        Call once the rollout is over: the outcome is already persisted, so waiting only lets
        the last notification leave before the process exits.
        """
        with self._lock:
            thread = self._thread
        if thread is None:
            return True
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            return False
        thread.join(timeout)
        if thread.is_alive():
            _log.warning("notifications still pending after %.0f s: not waiting longer", timeout)
            return False
        with self._lock:
            self._thread = None
        return True

    def _work(self) -> None:
        with httpx.Client(transport=self.transport) as client:
            while (item := self._queue.get()) is not None:
                target, event, rollout, body, key = item
                delivery = self._deliver(client, target, event, rollout, body, key)
                self.deliveries.append(delivery)

    def _deliver(self, client: httpx.Client, target: _Target, event: NotifyEvent,
                 rollout: str, body: dict[str, Any], key: str) -> Delivery:
        spec = target.spec
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json", "Idempotency-Key": key,
                   **target.headers}
        status: int | None = None
        error: str | None = None
        for attempt in range(1, spec.max_attempts + 1):
            retry_after: float | None = None
            try:
                r = client.post(target.url, content=data, headers=headers,
                                timeout=spec.timeout_seconds)
                status, error = r.status_code, None
                if r.is_success:
                    _log.info("notified %s of rollout %s %s (attempt %d)", target.where,
                              rollout, event.value, attempt)
                    return Delivery(spec.name, event, rollout, True, attempt, status, None)
                error = f"HTTP {status}"
                if status not in _RETRY_STATUS and status < 500:
                    break  # the receiver rejects this request: repeating it cannot help
                retry_after = _retry_after(r.headers.get("Retry-After"))
            except httpx.HTTPError as e:
                error = target.scrub(f"{type(e).__name__}: {e}")
            if attempt < spec.max_attempts:
                delay = min(spec.max_backoff_seconds, spec.backoff_seconds * 2 ** (attempt - 1))
                delay = delay * (0.5 + self.rng() / 2)
                if retry_after is not None:
                    delay = min(max(delay, retry_after), spec.max_backoff_seconds)
                _log.info("notification to %s failed (%s): retry %d in %.2f s", target.where,
                          error, attempt, delay)
                time.sleep(delay)
        _log.warning("notification %s of rollout %s to %s not delivered after %d attempt(s): "
                     "%s", event.value, rollout, target.where, attempt, error)
        return Delivery(spec.name, event, rollout, False, attempt, status, error)


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header in its delta-seconds form (dates are ignored)."""
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _resolve(spec: WebhookSpec, env: Mapping[str, str]) -> _Target | None:
    url = spec.url if spec.url is not None else env.get(spec.url_env or "")
    missing = [] if url else [spec.url_env or "url"]
    headers = dict(spec.headers)
    for header, var in spec.headers_from_env.items():
        if var in env:
            headers[header] = env[var]
        else:
            missing.append(var)
    if missing or url is None:
        _log.warning("webhook %s disabled: environment variable(s) %s not set", spec.name,
                     ", ".join(missing))
        return None
    if not url.startswith(("http://", "https://")):
        _log.warning("webhook %s disabled: its URL is not http(s)", spec.name)
        return None
    return _Target(spec, url, headers)
