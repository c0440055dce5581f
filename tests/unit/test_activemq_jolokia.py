"""The activemq source's pure half: the bulk request of a tick, and samples out of the answers
both brokers really give (tests/unit/activemq_answers.json, captured from the test brokers).

What it must get right: one POST covers every queue whatever their number; Classic's QueueSize
and Artemis' MessageCount both count the messages being delivered, which are in flight, not
ready; a missing queue fails alone and is told apart from a wrong broker name; whatever the
agent answers, only SourceError comes out, and no message quotes a credential.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from queuescaler.core.redact import register_secret
from queuescaler.core.sample import ErrorKind, QueueRef, QueueSample, SourceError
from queuescaler.sources.activemq.jolokia import (
    Answer,
    SamplePlan,
    classic_part,
    next_detected,
    object_name_keys,
    queue_mbean,
    queue_sample,
    quote,
)
from queuescaler.sources.activemq.spec import BrokerScope, Flavor

pytestmark = pytest.mark.unit

ANSWERS: dict[str, Any] = json.loads(
    (Path(__file__).with_name("activemq_answers.json")).read_text())
DETECT = BrokerScope()
NOW = 1_796_197_007.0


def detect_plan() -> SamplePlan:
    """The plan the answers `<kind>_detect` answer: flavor and broker name unknown."""
    return SamplePlan([DETECT.ref("orders"), DETECT.ref("nope")])


def flavor(kind: str) -> Flavor:
    assert kind in ("classic", "artemis")
    return cast(Flavor, kind)


def named_plan(kind: str) -> SamplePlan:
    """The plan the answers `<kind>_named` answer: the spec names the flavor and the broker."""
    scope = BrokerScope(flavor(kind), f"qs-{kind}")
    return SamplePlan([scope.ref(f"held-{kind}"), scope.ref("weird.name-x:1"), scope.ref("nope")],
                      None, flavor(kind))


def wrong_plan(kind: str) -> SamplePlan:
    return SamplePlan([BrokerScope(flavor(kind), "no-such-broker").ref("orders")], None,
                      flavor(kind))


def sample(outcome: QueueSample | SourceError) -> QueueSample:
    assert isinstance(outcome, QueueSample), outcome
    return outcome


def error(outcome: QueueSample | SourceError) -> SourceError:
    assert isinstance(outcome, SourceError), outcome
    return outcome


# --- ObjectNames ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "quoted"),
    [
        pytest.param("orders", '"orders"', id="plain"),
        pytest.param('with "quote', '"with \\"quote"', id="quote"),
        pytest.param("a*b?c", '"a\\*b\\?c"', id="wildcards-escaped-not-patterns"),
        pytest.param("back\\slash", '"back\\\\slash"', id="backslash"),
        pytest.param("weird.name-x:1,=", '"weird.name-x:1,="', id="colon-comma-equals-as-is"),
    ],
)
def test_artemis_names_are_quoted_as_java_quotes_them(name: str, quoted: str) -> None:
    assert quote(name) == quoted
    keys = object_name_keys(f"d:queue={quoted},broker=\"b\"")
    assert keys == {"queue": name, "broker": "b"}


@pytest.mark.parametrize(
    ("name", "encoded"),
    [
        pytest.param("orders", "orders", id="plain"),
        pytest.param("weird.name-x:1", "weird.name-x_1", id="colon"),
        pytest.param("a,b'c\"d", "a_b_c_d", id="comma-and-quotes"),
        pytest.param("a=b", "a&amp;b", id="equals"),
        pytest.param("a*b?", "a&ast;b&qe;", id="wildcards"),
    ],
)
def test_classic_names_are_mangled_as_it_mangles_them(name: str, encoded: str) -> None:
    assert classic_part(name) == encoded


def test_the_queue_mbeans_of_both_flavors() -> None:
    assert queue_mbean("classic", "b", DETECT, "a:b") == (
        "org.apache.activemq:type=Broker,brokerName=b,destinationType=Queue,destinationName=a_b")
    assert queue_mbean("classic", None, DETECT, "q").startswith(
        "org.apache.activemq:type=Broker,brokerName=*,")
    assert queue_mbean("artemis", "0.0.0.0", BrokerScope(None, None, "events", "multicast"),
                       "sub-1") == (
        'org.apache.activemq.artemis:broker="0.0.0.0",component=addresses,address="events",'
        'subcomponent=queues,routing-type="multicast",queue="sub-1"')


@pytest.mark.parametrize(
    "name", ["no-colon", "d:", "d:=x", 'd:a="unterminated', 'd:a="x"y', "d:a"],
)
def test_a_name_that_does_not_read_as_an_object_name_is_none(name: str) -> None:
    assert object_name_keys(name) is None


# --- the request ------------------------------------------------------------------------------


@pytest.mark.parametrize("queues", [1, 10, 100])
def test_one_bulk_body_covers_every_queue_with_one_probe_per_broker(queues: int) -> None:
    scope = BrokerScope("artemis", "b")
    plan = SamplePlan([scope.ref(f"q{i}") for i in range(queues)], None, None)
    body = plan.body()
    assert len(body) == 1 + queues
    assert body[0] == {"type": "read", "mbean": 'org.apache.activemq.artemis:broker="b"',
                       "attribute": ["Version"]}
    assert all(read["type"] == "read" for read in body)
    assert json.loads(json.dumps(body)) == body


def test_a_queue_of_unknown_flavor_is_read_both_ways_until_the_flavor_is_known() -> None:
    first = SamplePlan([DETECT.ref("q")])
    assert [read["mbean"].split(":")[0] for read in first.body()] == [
        "org.apache.activemq", "org.apache.activemq.artemis",
        "org.apache.activemq", "org.apache.activemq.artemis"]
    later = SamplePlan([DETECT.ref("q")], None, "classic")
    assert len(later.body()) == 2


def test_the_secrets_broker_name_is_used_unless_the_spec_names_one() -> None:
    plan = SamplePlan([BrokerScope("classic").ref("a"), BrokerScope("classic", "mine").ref("b")],
                      "theirs")
    assert [read["mbean"] for read in plan.body()][:2] == [
        "org.apache.activemq:type=Broker,brokerName=theirs",
        "org.apache.activemq:type=Broker,brokerName=mine"]


def test_a_queue_of_another_source_is_refused_without_a_read() -> None:
    stray = QueueRef("/", "orders")
    plan = SamplePlan([stray])
    assert plan.body() == []
    assert error(plan.parse([], NOW).result[stray]).kind is ErrorKind.BAD_CONFIG


# --- real answers -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["classic", "artemis"])
def test_a_first_tick_finds_the_flavor_the_name_and_the_queues(kind: str) -> None:
    outcome = detect_plan().parse(ANSWERS[f"{kind}_detect"], NOW)
    assert outcome.flavors == {kind}
    assert dict(outcome.names) == {kind: f"qs-{kind}"}
    orders = sample(outcome.result[DETECT.ref("orders")])
    assert (orders.ready, orders.unacked, orders.consumers) == (5, 0, 0)
    assert (orders.published_total, orders.acked_total, orders.taken_at) == (5, 0, NOW)
    missing = error(outcome.result[DETECT.ref("nope")])
    assert missing.kind is ErrorKind.QUEUE_NOT_FOUND
    assert "queue 'nope'" in missing.message


def test_classic_queue_size_counts_the_dispatched_messages_which_are_in_flight() -> None:
    """6 sent, a consumer with prefetch 2 holds 2 unacked: QueueSize 6, InFlightCount 2."""
    plan = named_plan("classic")
    outcome = plan.parse(ANSWERS["classic_named"], NOW)
    held = sample(outcome.result[plan.queue_reads[0].ref])
    assert (held.ready, held.unacked, held.consumers, held.backlog) == (4, 2, 1, 6)
    assert (held.published_total, held.acked_total) == (6, 0)


def test_artemis_message_count_counts_the_delivering_messages_which_are_in_flight() -> None:
    """6 sent, a consumer taking one at a time holds 1: MessageCount 6, DeliveringCount 1."""
    plan = named_plan("artemis")
    outcome = plan.parse(ANSWERS["artemis_named"], NOW)
    held = sample(outcome.result[plan.queue_reads[0].ref])
    assert (held.ready, held.unacked, held.consumers, held.backlog) == (5, 1, 1, 6)


@pytest.mark.parametrize("kind", ["classic", "artemis"])
def test_a_name_with_a_colon_reads_on_both_flavors(kind: str) -> None:
    plan = named_plan(kind)
    outcome = plan.parse(ANSWERS[f"{kind}_named"], NOW)
    weird = sample(outcome.result[plan.queue_reads[1].ref])
    assert (weird.ready, weird.published_total) == (2, 2)
    assert error(outcome.result[plan.queue_reads[2].ref]).kind is ErrorKind.QUEUE_NOT_FOUND
    assert outcome.names == {}  # a named probe learns no name


def test_artemis_scheduled_messages_are_not_ready_yet() -> None:
    """As the test broker answered 2 scheduled (AMQ_SCHEDULED_DELAY) and 1 plain message."""
    found = queue_sample("artemis", {
        "MessagesAdded": 3, "DeliveringCount": 0, "MessageCount": 3, "ScheduledCount": 2,
        "ConsumerCount": 0, "MessagesAcknowledged": 0}, NOW)
    assert (found.ready, found.unacked) == (1, 0)


@pytest.mark.parametrize("kind", ["classic", "artemis"])
def test_a_wrong_broker_name_is_bad_config_not_a_missing_queue(kind: str) -> None:
    plan = wrong_plan(kind)
    outcome = plan.parse(ANSWERS[f"{kind}_wrong_broker"], NOW)
    wrong = error(outcome.result[plan.queue_reads[0].ref])
    assert wrong.kind is ErrorKind.BAD_CONFIG
    assert "named 'no-such-broker'" in wrong.message
    assert outcome.flavors == frozenset()


def test_an_agent_without_activemq_is_bad_config() -> None:
    plan = detect_plan()
    nothing = [{"status": 404, "error_type": "javax.management.InstanceNotFoundException",
                "error": "No MBean with pattern"}] * 6
    wrong = error(plan.parse(nothing, NOW).result[DETECT.ref("orders")])
    assert wrong.kind is ErrorKind.BAD_CONFIG
    assert "no ActiveMQ broker (Classic or Artemis) answers" in wrong.message


def test_classic_names_mangled_alike_are_not_mistaken_for_each_other() -> None:
    plan = SamplePlan([BrokerScope("classic", "b").ref("a:b")])
    entries = [{"status": 200, "value": {"BrokerVersion": "5.17.2"}},
               {"status": 200, "value": {"QueueSize": 3, "InFlightCount": 0, "ConsumerCount": 0,
                                         "EnqueueCount": 3, "DequeueCount": 0, "Name": "a_b"}}]
    found = error(plan.parse(entries, NOW).result[BrokerScope("classic", "b").ref("a:b")])
    assert found.kind is ErrorKind.QUEUE_NOT_FOUND


@pytest.mark.parametrize("queue", [
    {"status": 404, "error_type": "javax.management.InstanceNotFoundException",
     "error": "No MBean"},
    {"status": 200, "value": {"QueueSize": 0, "InFlightCount": 0, "ConsumerCount": 0,
                              "EnqueueCount": 0, "DequeueCount": 0, "Name": "q"}},
], ids=["queue-not-loaded-yet", "queue-read-on-the-standby"])
def test_a_classic_slave_is_unreachable_not_an_empty_or_missing_queue(
    queue: dict[str, Any],
) -> None:
    """While a Classic broker starts (end to end: 0.3 s in which its MBean answered and a
    queue holding messages did not exist yet) and on the standby of a master/slave pair,
    `Slave` is true: its queues say nothing of the master's."""
    ref = BrokerScope("classic", "b").ref("q")
    probe = {"status": 200, "value": {"BrokerVersion": "5.17.2", "Slave": True}}
    outcome = SamplePlan([ref]).parse([probe, queue], NOW)
    failed = error(outcome.result[ref])
    assert failed.kind is ErrorKind.UNREACHABLE and "slave" in failed.message
    assert outcome.flavors == {"classic"}  # a Classic broker all the same


def test_several_brokers_behind_one_agent_ask_for_a_broker_name() -> None:
    ref = BrokerScope("classic").ref("q")
    plan = SamplePlan([ref])
    two = {f"org.apache.activemq:brokerName={b},type=Broker": {"BrokerVersion": "5"}
           for b in "ab"}
    queues = {f"org.apache.activemq:brokerName={b},destinationName=q,destinationType=Queue,"
              "type=Broker": {"QueueSize": 1, "InFlightCount": 0, "ConsumerCount": 0,
                              "Name": "q"} for b in "ab"}
    outcome = plan.parse([{"status": 200, "value": two}, {"status": 200, "value": queues}], NOW)
    assert "set brokerName" in error(outcome.result[ref]).message
    assert outcome.names == {}


def test_a_queue_on_both_flavors_asks_for_the_flavor() -> None:
    plan = SamplePlan([DETECT.ref("q")])
    classic = {"QueueSize": 1, "InFlightCount": 0, "ConsumerCount": 0, "Name": "q"}
    artemis = {"MessageCount": 1, "DeliveringCount": 0, "ScheduledCount": 0, "ConsumerCount": 0}
    ok: dict[str, Any] = {"status": 200, "value": {"d:broker=x": {"Version": "1"}}}
    entries = [ok, ok, {"status": 200, "value": {"d:brokerName=x": classic}},
               {"status": 200, "value": {"d:broker=x": artemis}}]
    assert "set flavor" in error(plan.parse(entries, NOW).result[DETECT.ref("q")]).message


# --- what goes wrong, per queue and as a whole ------------------------------------------------


def one_queue(entry: dict[str, Any]) -> QueueSample | SourceError:
    ref = BrokerScope("classic", "b").ref("q")
    return SamplePlan([ref]).parse([{"status": 200, "value": {"BrokerVersion": "5"}}, entry],
                                   NOW).result[ref]


GOOD = {"QueueSize": 5, "InFlightCount": 1, "ConsumerCount": 1, "EnqueueCount": 9,
        "DequeueCount": 4, "Name": "q"}


@pytest.mark.parametrize(
    ("entry", "kind", "words"),
    [
        pytest.param({"status": 403, "error_type": "java.lang.SecurityException",
                      "error": "Reading attribute QueueSize is forbidden"}, ErrorKind.AUTH,
                     "refuses the read", id="policy-forbids"),
        pytest.param({"status": 500, "error_type": "java.lang.RuntimeException", "error": "boom"},
                     ErrorKind.BAD_RESPONSE, "status 500: boom", id="agent-error"),
        pytest.param({"status": 404, "error_type": "javax.management.AttributeNotFoundException",
                      "error": "No such attribute: QueueSize"}, ErrorKind.BAD_RESPONSE,
                     "No such attribute", id="attribute-missing-is-no-missing-queue"),
        pytest.param({"status": 200, "value": dict(GOOD, QueueSize="[Object limit exceeded]")},
                     ErrorKind.BAD_RESPONSE, "'QueueSize' is not a count",
                     id="object-limit-string"),
        pytest.param({"status": 200, "value": dict(GOOD, InFlightCount=-1)},
                     ErrorKind.BAD_RESPONSE, "'InFlightCount' is negative", id="negative"),
        pytest.param({"status": 200, "value": dict(GOOD, ConsumerCount=True)},
                     ErrorKind.BAD_RESPONSE, "'ConsumerCount' is not a count", id="boolean"),
        pytest.param({"status": 200, "value": {"Name": "q"}}, ErrorKind.BAD_RESPONSE,
                     "'QueueSize' is missing", id="counts-missing"),
        pytest.param({"status": 200, "value": "ERROR: no"}, ErrorKind.BAD_RESPONSE,
                     "holds no attributes", id="value-not-an-object"),
        pytest.param({"value": GOOD}, ErrorKind.BAD_RESPONSE, "not a Jolokia answer",
                     id="no-status"),
    ],
)
def test_a_queue_whose_read_fails_fails_alone(
    entry: dict[str, Any], kind: ErrorKind, words: str
) -> None:
    failed = error(one_queue(entry))
    assert failed.kind is kind
    assert words in failed.message


def test_counters_are_optional_and_reported_as_the_broker_gives_them() -> None:
    """A restarted broker's counters start again from zero: reported as they are (the core
    takes a counter that went down for a reset); one it lacks is unknown, the counts stay."""
    before = sample(one_queue({"status": 200, "value": GOOD}))
    after = sample(one_queue({"status": 200, "value": dict(GOOD, EnqueueCount=2,
                                                           DequeueCount=0)}))
    assert (before.published_total, before.acked_total) == (9, 4)
    assert (after.published_total, after.acked_total) == (2, 0)
    partial = sample(one_queue({"status": 200, "value": dict(GOOD, EnqueueCount=None)}))
    assert (partial.ready, partial.published_total, partial.acked_total) == (4, None, 4)


def test_a_count_sent_as_an_integral_float_is_taken() -> None:
    assert sample(one_queue({"status": 200, "value": dict(GOOD, QueueSize=5.0)})).ready == 4


@pytest.mark.parametrize(
    ("document", "kind", "words"),
    [
        pytest.param({"error_type": "java.lang.Exception", "status": 403,
                      "error": "java.lang.Exception : Origin http://x is not allowed to call "
                               "this agent"}, ErrorKind.AUTH, "set the Secret's key 'origin'",
                     id="origin-refused"),
        pytest.param({"error_type": "java.lang.IllegalArgumentException", "status": 400,
                      "error": "Invalid object name"}, ErrorKind.BAD_RESPONSE,
                     "Invalid object name", id="whole-request-refused"),
        pytest.param({"status": 200, "value": 1}, ErrorKind.BAD_RESPONSE, "an object, not a list",
                     id="an-object"),
        pytest.param("nope", ErrorKind.BAD_RESPONSE, "a JSON str, not a list", id="a-string"),
        pytest.param([{"status": 200}], ErrorKind.BAD_RESPONSE, "1 entries for 2 reads",
                     id="too-short"),
    ],
)
def test_an_answer_that_is_no_bulk_answer_fails_the_tick(
    document: Any, kind: ErrorKind, words: str
) -> None:
    with pytest.raises(SourceError) as failed:
        SamplePlan([BrokerScope("classic", "b").ref("q")]).parse(document, NOW)
    assert failed.value.kind is kind
    assert words in failed.value.message


def test_no_message_quotes_a_registered_password() -> None:
    secret = f"sec-{uuid.uuid4().hex}"
    register_secret(secret)
    failed = error(one_queue({"status": 500, "error": f"login {secret} refused"}))
    assert secret not in str(failed)
    assert secret not in Answer(403, error=f"Origin {secret}").problem("x").message


# --- the flavor, from one tick to the next ----------------------------------------------------


def test_the_flavor_found_is_kept_and_forgotten_when_its_broker_goes() -> None:
    plan = detect_plan()
    found = plan.parse(ANSWERS["classic_detect"], NOW)
    assert next_detected(None, plan, found) == "classic"
    named = SamplePlan([DETECT.ref("orders")], None, "classic")
    absent = {"status": 404, "error_type": "javax.management.InstanceNotFoundException"}
    gone = named.parse([absent, absent], NOW)
    assert next_detected("classic", named, gone) is None
    broken = named.parse([{"status": 500}, {"status": 500}], NOW)
    assert next_detected("classic", named, broken) is None


# --- fuzzing ----------------------------------------------------------------------------------


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 10**20) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=20,
)
ENTRY = st.fixed_dictionaries(
    {"status": st.sampled_from([200, 403, 404, 500])},
    optional={"value": JSON | st.fixed_dictionaries({}, optional={
        k: JSON | st.integers(-2, 9) for k in ("QueueSize", "InFlightCount", "ConsumerCount",
                                              "MessageCount", "DeliveringCount", "Name")}),
              "error_type": st.sampled_from(["javax.management.InstanceNotFoundException", "x"]),
              "error": st.text(max_size=10)},
)


@settings(max_examples=300, deadline=None)
@given(st.lists(ENTRY, min_size=4, max_size=4) | JSON)
def test_whatever_the_agent_answers_only_source_errors_come_out(document: Any) -> None:
    plan = detect_plan()
    try:
        outcome = plan.parse(document, NOW)
    except SourceError:
        return
    assert set(outcome.result) == {DETECT.ref("orders"), DETECT.ref("nope")}
    for found in outcome.result.values():
        if isinstance(found, QueueSample):
            assert found.ready >= 0 and found.unacked >= 0 and found.consumers >= 0
