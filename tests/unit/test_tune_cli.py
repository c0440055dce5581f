"""`queuescaler simulate` and `queuescaler recommend` as users run them: on a CSV, a named
synthetic trace, and a stand-in Prometheus; their errors on bad input (tune.py)."""

from __future__ import annotations

import base64
import contextlib
import http.server
import json
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result

from queuescaler import cli
from queuescaler.tune import inputs as tune

pytestmark = pytest.mark.unit

SPEC: dict[str, Any] = {
    "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "thumbnailer"},
    "minReplicas": 0,
    "maxReplicas": 20,
    "source": {"rabbitmq": {"queue": "thumbnails", "connectionSecretRef": {"name": "rabbit"}}},
    "target": {"messagesPerReplica": 20},
}


def manifest(spec: dict[str, Any] = SPEC, name: str = "thumbnails") -> dict[str, Any]:
    return {"apiVersion": "queuescaler.io/v1alpha1", "kind": "QueueScaler",
            "metadata": {"name": name, "namespace": "media"}, "spec": spec}


@pytest.fixture
def scaler_file(tmp_path: Path) -> Path:
    path = tmp_path / "queuescaler.yaml"
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"}}
    path.write_text(yaml.safe_dump_all([deployment, manifest()]))
    return path


@pytest.fixture
def csv_file(tmp_path: Path) -> Path:
    """Twenty minutes a point a minute: 2 msg/s, a burst of 60 msg/s for three minutes."""
    path = tmp_path / "traffic.csv"
    rates = [2.0] * 8 + [60.0] * 3 + [2.0] * 9
    path.write_text("time,publish_rate,service_seconds\n"
                    + "".join(f"{60 * i},{rate},0.25\n" for i, rate in enumerate(rates)))
    return path


def invoke(*args: str | Path) -> Result:
    return CliRunner().invoke(cli.main, [str(a) for a in args], catch_exceptions=False)


def test_simulate_a_csv_prints_the_table_the_origins_and_draws_the_picture(
    scaler_file: Path, csv_file: Path, tmp_path: Path
) -> None:
    png = tmp_path / "out" / "picture.png"
    result = invoke("simulate", "-f", scaler_file, "--csv", csv_file, "--compare",
                    "--png", png, "--concurrency", "2")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "QueueScaler media/thumbnails from" in out
    assert "service time     0.25 s  estimated: mean of the traffic's service_seconds" in out
    assert "concurrency      2       given" in out
    assert "prefetch         1       default" in out
    assert "message by message" in out
    header = next(line for line in out.splitlines() if line.startswith("| policy"))
    assert [c.strip() for c in header.strip("|").split("|")] == [
        "policy", "p50 wait", "p95 wait", "replica-hours", "scale events", "redelivered",
        "left at end"]
    for policy in ("queuescaler", "keda-queue-length", "oracle"):
        assert f"| {policy} " in out
    assert "queuescaler's scale events by reason: " in out
    assert f"picture: {png}" in out
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_simulate_a_named_trace_without_compare_replays_ours_alone(scaler_file: Path) -> None:
    result = invoke("simulate", "-f", scaler_file, "--trace", "keda-rate", "--no-png")
    assert result.exit_code == 0, result.output
    assert 'synthetic trace "keda-rate"' in result.output
    assert "service time     1 s   the trace's (keda-rate)" in result.output
    assert "| queuescaler " in result.output and "keda-queue-length" not in result.output
    assert "picture:" not in result.output


def test_recommend_prints_the_trials_and_a_merge_patch(
    scaler_file: Path, csv_file: Path
) -> None:
    result = invoke("recommend", "-f", scaler_file, "--csv", csv_file, "--p95-wait", "1m")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "goal: p95 wait <= 60.0 s" in out
    assert "| 1 (as given) " in out
    assert "<- chosen" in out  # 20 messages a replica is not the cheapest
    assert "patch (kubectl patch queuescaler thumbnails -n media --type merge" in out
    patch = yaml.safe_load(out.split("--patch-file PATCH.yaml):", 1)[1])
    assert set(patch) == {"spec"} and set(patch["spec"]) <= {"target", "behavior"}


def test_recommend_exits_1_when_no_setting_meets_the_goal(
    scaler_file: Path, csv_file: Path
) -> None:
    result = invoke("recommend", "-f", scaler_file, "--csv", csv_file, "--p95-wait", "1ms",
                    "--service-seconds", "5", "--pod-start-delay", "60")
    assert result.exit_code == 1, result.output
    assert "no setting tried meets p95 <= 0.0 s; the closest:" in result.output


@pytest.mark.parametrize(
    ("change", "message"),
    [
        pytest.param({"maxReplicas": None}, "spec.maxReplicas: is required", id="required"),
        pytest.param({"target": {"messagesPerReplica": 0}},
                     "spec.target.messagesPerReplica: must be >= 1", id="range"),
        pytest.param({"behavior": {"scaleDwn": {}}}, "spec.behavior.scaleDwn: unknown field",
                     id="typo"),
    ],
)
def test_a_spec_the_operator_refuses_is_refused_in_its_words(
    tmp_path: Path, csv_file: Path, change: dict[str, Any], message: str
) -> None:
    spec = {k: v for k, v in {**SPEC, **change}.items() if v is not None}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(manifest(spec)))
    result = invoke("simulate", "-f", path, "--csv", csv_file, "--no-png")
    assert result.exit_code == 1
    assert f"Error: invalid spec in {path}: {message}" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(("--no-png",), "exactly one of --csv, --trace or --prometheus (got none)",
                     id="no-traffic"),
        pytest.param(("--trace", "bursts", "--prometheus", "http://x"),
                     "(got --trace, --prometheus)", id="two-traffics"),
        pytest.param(("--trace", "nope"), "'nope' is not one of", id="unknown-trace"),
        pytest.param(("--trace", "bursts", "--pod-start-delay", "soon"),
                     "'soon' is not a duration", id="bad-duration"),
    ],
)
def test_bad_options_are_refused(scaler_file: Path, args: tuple[str, ...], message: str) -> None:
    result = invoke("simulate", "-f", scaler_file, *args)
    assert result.exit_code == 2 and message in result.output, result.output


def test_a_bad_csv_names_its_line(scaler_file: Path, tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("0,1\n60,lots\n")
    result = invoke("simulate", "-f", scaler_file, "--csv", path)
    assert result.exit_code == 1
    assert "Error: bad.csv, line 2: publish_rate 'lots' is not a number" in result.output


def test_a_file_of_several_queuescalers_needs_one_named(tmp_path: Path) -> None:
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump_all([manifest(name="a"), manifest(name="b")]))
    result = invoke("simulate", "-f", path, "--trace", "bursts", "--no-png")
    assert result.exit_code == 1 and "several QueueScalers (media/a, media/b)" in result.output
    result = invoke("simulate", "-f", path, "--queuescaler", "media/b", "--trace", "keda-rate",
                    "--no-png")
    assert result.exit_code == 0 and "QueueScaler media/b from" in result.output


def test_metadata_that_is_not_a_mapping_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "meta.yaml"
    path.write_text("kind: QueueScaler\nmetadata: justastring\nspec: {}\n")
    result = invoke("simulate", "-f", path, "--trace", "bursts", "--no-png")
    assert result.exit_code == 1
    assert result.output == ("Error: the QueueScaler's metadata is not a mapping (metadata: "
                             "'justastring')\n")


@pytest.mark.parametrize(
    ("name", "picture"),
    [
        pytest.param("thumbnails", "thumbnails-simulate.png", id="plain"),
        pytest.param("../../pwned/x", "x-simulate.png", id="parents"),
        pytest.param("/etc/x", "x-simulate.png", id="absolute"),
        pytest.param("..", "queuescaler-simulate.png", id="dot-dot"),
        pytest.param("a b\\c", "c-simulate.png", id="backslash"),
    ],
)
def test_the_default_picture_is_a_plain_file_in_the_current_folder(
    name: str, picture: str
) -> None:
    from queuescaler.tune.commands import default_picture

    assert default_picture(name) == Path(picture)


def test_a_name_with_parents_draws_in_the_current_folder_only(
    tmp_path: Path, csv_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("matplotlib")
    path = tmp_path / "qs.yaml"
    path.write_text(yaml.safe_dump(manifest(name="../../pwned/x")))
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    result = invoke("simulate", "-f", path, "--csv", csv_file)
    assert result.exit_code == 0, result.output
    assert "picture: x-simulate.png" in result.output
    assert (work / "x-simulate.png").exists() and not (tmp_path / "pwned").exists()


def test_a_picture_that_cannot_be_written_is_a_one_line_error(
    scaler_file: Path, csv_file: Path, tmp_path: Path
) -> None:
    pytest.importorskip("matplotlib")
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = invoke("simulate", "-f", scaler_file, "--csv", csv_file, "--png",
                    blocker / "x.png")
    assert result.exit_code == 1
    assert "| queuescaler " in result.output  # the tables came first
    assert result.output.splitlines()[-1].startswith(
        f"Error: cannot write the picture to {blocker / 'x.png'}: ")


def test_a_csv_with_a_byte_order_mark_replays(scaler_file: Path, tmp_path: Path) -> None:
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbftime,publish_rate\n0,5\n10,5\n")
    result = invoke("simulate", "-f", scaler_file, "--csv", path, "--no-png")
    assert result.exit_code == 0, result.output


def test_a_csv_in_milliseconds_is_refused_with_a_hint(scaler_file: Path, tmp_path: Path) -> None:
    path = tmp_path / "ms.csv"
    path.write_text("time,publish_rate\n1767225600000,5\n1767225615000,5\n")
    result = invoke("simulate", "-f", scaler_file, "--csv", path, "--no-png")
    assert result.exit_code == 1
    assert "ms.csv, line 2: time '1767225600000' is not seconds" in result.output
    assert "milliseconds? divide by 1,000" in result.output


def test_no_picture_without_matplotlib_says_how_to_get_it(
    scaler_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails as if not installed
    result = invoke("simulate", "-f", scaler_file, "--trace", "keda-rate")
    assert result.exit_code == 0
    assert "no picture: matplotlib is not installed (pip install 'queuescaler[tune]'" in (
        result.output)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        pytest.param("30", 30.0, id="plain"),
        pytest.param("30s", 30.0, id="seconds"),
        pytest.param("1h30m", 5400.0, id="compound"),
        pytest.param("7d", 604800.0, id="days"),
        pytest.param("250ms", 0.25, id="milliseconds"),
    ],
)
def test_durations_read_as_prometheus_writes_them(text: str, seconds: float) -> None:
    assert tune.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "-5s", "5x", "5s junk", "s"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        tune.parse_duration(text)


# --- a stand-in Prometheus -----------------------------------------------------------------------


class FakePrometheus(http.server.ThreadingHTTPServer):
    mode = "series"
    queries: list[str]
    paths: list[str]
    authorizations: list[str | None]


class Handler(http.server.BaseHTTPRequestHandler):
    server: FakePrometheus

    def log_message(self, *_: Any) -> None:
        pass

    def do_GET(self) -> None:
        params = dict(urllib.parse.parse_qsl(urllib.parse.urlparse(self.path).query))
        self.server.queries.append(params["query"])
        self.server.paths.append(self.path)
        self.server.authorizations.append(self.headers.get("Authorization"))
        mode = self.server.mode
        broken = {
            "data-null": {"status": "success", "data": None},
            "data-list": {"status": "success", "data": []},
            "vector": {"status": "success", "data": {"resultType": "vector", "result": [
                {"metric": {}, "value": [1, "1"]}]}},
            "not-a-number": {"status": "success", "data": {"resultType": "matrix", "result": [
                {"metric": {}, "values": [[1, "abc"]]}]}},
            "bad-pair": {"status": "success", "data": {"resultType": "matrix", "result": [
                {"metric": {}, "values": [[1]]}]}},
        }
        if mode in broken:
            self.reply(200, json.dumps(broken[mode]))
            return
        if mode == "refuse":
            self.reply(400, json.dumps({"status": "error", "error": "parse error at char 3"}))
            return
        if mode == "garbage":
            self.reply(200, "<html>not me</html>")
            return
        if mode == "echo-404":  # a proxy's error page quoting the request
            self.reply(404, f"404 page not found: {self.path}")
            return
        if mode == "drip":  # a byte at a time, each well within the socket timeout
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            with contextlib.suppress(OSError):
                for _ in range(40):
                    self.wfile.write(b" ")
                    self.wfile.flush()
                    time.sleep(0.05)
            return
        start, end, step = (float(params[k]) for k in ("start", "end", "step"))
        times = [start + i * step for i in range(int((end - start) / step) + 1)]
        query = params["query"]
        if mode == "empty" or ("per_replica" in query and mode == "no-rate"):
            values: list[tuple[float, float]] = []
        elif mode == "one-point":
            values = [(times[-1], 1.0)]
        elif mode == "negative-rates" and "publish_rate" in query:
            values = [(t, -5.0) for t in times]
        elif mode == "negative" and "unacked" not in query:
            # A negative publish rate at one point, a negative backlog and per-replica rate at
            # every point; and points outside the range asked (years away).
            values = [(t, -1.0 if "backlog" in query or "per_replica" in query or i == 3
                       else 2.0) for i, t in enumerate(times)]
            values += [(end * 1000, 5.0), (0.0, 5.0)]
        elif "publish_rate" in query:
            values = [(t, 40.0 if 5 <= i < 8 else 1.0) for i, t in enumerate(times)]
        elif "backlog" in query:
            values = [(t, 30.0 if i == 0 else 0.0) for i, t in enumerate(times)]
        elif "per_replica_rate" in query:
            values = [(t, 8.0) for t in times]
        else:
            values = [(t, 1.0 if i < 5 else 6.0) for i, t in enumerate(times)]
        result = [{"metric": {}, "values": [[t, str(v)] for t, v in values]}] if values else []
        self.reply(200, json.dumps(
            {"status": "success", "data": {"resultType": "matrix", "result": result}}))

    def reply(self, code: int, body: str) -> None:
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def prometheus() -> Iterator[FakePrometheus]:
    server = FakePrometheus(("127.0.0.1", 0), Handler)
    server.queries, server.paths, server.authorizations = [], [], []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def url(server: FakePrometheus) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


def test_simulate_from_prometheus_estimates_the_task_time_and_shows_the_recorded_pool(
    scaler_file: Path, prometheus: FakePrometheus
) -> None:
    result = invoke("simulate", "-f", scaler_file, "--prometheus", url(prometheus),
                    "--range", "10m", "--step", "30s", "--no-png")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "the operator's series of media/thumbnails over 600 s (21 points, one every 30 s)" in out
    assert "service time     0.125 s  estimated: concurrency 1 / per-replica rate 8 msg/s" in out
    assert "note: the first 60 s are a warm-up at 1 msg/s, replayed and not counted" in out
    assert "note: the backlog at the start (30 messages) is published in the warm-up's last" in out
    assert "every pool starts the 60 s warm-up at 1 replica" in out
    assert "| recorded " in out
    assert all('scaler_namespace="media", scaler="thumbnails"' in q for q in prometheus.queries)


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        pytest.param("empty", "has no queuescaler_publish_rate series for QueueScaler "
                     "media/thumbnails over the last 600 s", id="no-series"),
        pytest.param("refuse", "refused max(queuescaler_publish_rate", id="http-400"),
        pytest.param("garbage", "answered something that is not JSON", id="not-prometheus"),
        pytest.param("data-null", "answered max(queuescaler_publish_rate{scaler_namespace="
                     '"media", scaler="thumbnails"}) without a result list', id="data-null"),
        pytest.param("data-list", "without a result list", id="data-list"),
        pytest.param("vector", "with a vector without values over time, not a range",
                     id="vector"),
        pytest.param("not-a-number", "with a point that is not [time, number]: [1, 'abc']",
                     id="not-a-number"),
        pytest.param("bad-pair", "with a point that is not [time, number]: [1]", id="bad-pair"),
        pytest.param("negative-rates", "answered queuescaler_publish_rate for QueueScaler "
                     "media/thumbnails with 21 points that are negative, NaN, infinite or "
                     "outside the 600 s asked, and 0 usable", id="negative-rates"),
    ],
)
def test_prometheus_errors_are_clear(
    scaler_file: Path, prometheus: FakePrometheus, mode: str, message: str
) -> None:
    prometheus.mode = mode
    result = invoke("simulate", "-f", scaler_file, "--prometheus", url(prometheus),
                    "--range", "10m", "--step", "30s", "--no-png")
    assert result.exit_code == 1 and message in result.output, result.output
    said = [line for line in result.output.splitlines() if not line.startswith("... ")]
    assert len(said) == 1 and said[0].startswith("Error: "), result.output


def test_negative_values_and_points_outside_the_range_are_missing_points(
    scaler_file: Path, prometheus: FakePrometheus
) -> None:
    prometheus.mode = "negative"
    result = invoke("simulate", "-f", scaler_file, "--prometheus", url(prometheus),
                    "--range", "10m", "--step", "30s", "--no-png")
    assert result.exit_code == 0, result.output
    # The point of a negative rate (and negative backlog) is left out, none years away.
    assert "over 600 s (20 points, one every 30 s)" in result.output
    assert "service time     1 s" in result.output  # no per-replica rate above 0: the default
    assert "the backlog at the start" not in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(("--step", "30s"), "has 1 point of queuescaler_publish_rate for QueueScaler "
                     "media/thumbnails over the last 600 s at 30 s steps, and a replay needs 2: "
                     "try a finer --step", id="one-point"),
        pytest.param(("--step", "10m"), "at 600 s steps, and a replay needs 2: try a finer "
                     "--step", id="step-as-long-as-the-range"),
    ],
)
def test_too_few_points_at_a_coarse_step_ask_for_a_finer_one(
    scaler_file: Path, prometheus: FakePrometheus, args: tuple[str, ...], message: str
) -> None:
    prometheus.mode = "one-point"
    result = invoke("simulate", "-f", scaler_file, "--prometheus", url(prometheus),
                    "--range", "10m", *args, "--no-png")
    assert result.exit_code == 1 and message in result.output, result.output
    assert "longer --range" not in result.output


def test_a_range_longer_than_a_replay_covers_is_refused_before_asking(
    scaler_file: Path, prometheus: FakePrometheus
) -> None:
    result = invoke("simulate", "-f", scaler_file, "--prometheus", url(prometheus),
                    "--range", "32d", "--no-png")
    assert result.exit_code == 2, result.output
    assert "2.7648e+06 s is more than the 31 days (2,678,400 s) a replay covers: give a " \
        "shorter --range" in result.output
    assert prometheus.queries == []


def test_credentials_in_the_url_are_sent_as_a_header_and_never_shown(
    scaler_file: Path, prometheus: FakePrometheus
) -> None:
    port = prometheus.server_address[1]
    given = f"http://me%40corp:s3cretpw@127.0.0.1:{port}/prom/?token=s3cretTok&org=1"
    result = CliRunner().invoke(cli.main, [
        "simulate", "-f", str(scaler_file), "--prometheus", given, "--range", "10m",
        "--step", "30s", "--no-png", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "s3cret" not in result.stdout and "s3cret" not in result.stderr
    shown = f"http://***@127.0.0.1:{port}/prom/?token=***&org=***"
    assert f"traffic: Prometheus at {shown}, the operator's series" in result.stdout
    assert f"from {shown} (600 s at 30 s steps)" in result.stderr
    assert set(prometheus.authorizations) == {
        "Basic " + base64.b64encode(b"me@corp:s3cretpw").decode()}
    path = urllib.parse.urlsplit(prometheus.paths[0])
    assert path.path == "/prom/api/v1/query_range"
    params = urllib.parse.parse_qs(path.query)
    assert params["token"] == ["s3cretTok"] and params["org"] == ["1"]
    assert set(params) == {"token", "org", "query", "start", "end", "step"}


def test_an_error_shows_the_url_masked(scaler_file: Path, prometheus: FakePrometheus) -> None:
    prometheus.mode = "refuse"
    port = prometheus.server_address[1]
    result = CliRunner().invoke(cli.main, [
        "simulate", "-f", str(scaler_file), "--prometheus",
        f"http://u:s3cretpw@127.0.0.1:{port}?token=s3cretTok", "--no-png", "--no-progress"])
    assert result.exit_code == 1
    assert f"Prometheus at http://***@127.0.0.1:{port}?token=*** refused" in result.output
    assert "s3cret" not in result.stdout and "s3cret" not in result.stderr


def test_the_timeline_script_asks_and_masks_as_simulate_does(
    prometheus: FakePrometheus, tmp_path: Path
) -> None:
    """hack/plot_timeline.py (make demo's picture) reads the same series the same way."""
    script = Path(__file__).resolve().parents[2] / "hack" / "plot_timeline.py"
    port = prometheus.server_address[1]
    given = f"http://me:s3cretpw@127.0.0.1:{port}/?token=s3cretTok"
    run = [sys.executable, str(script), "--prometheus", given, "--namespace", "media",
           "--scaler", "thumbnails", "--minutes", "1"]
    drawn = subprocess.run([*run, "--out", str(tmp_path / "x.png")], capture_output=True,
                           text=True, timeout=60, check=False)
    assert drawn.returncode == 0, drawn.stderr
    assert (tmp_path / "x.png").read_bytes().startswith(b"\x89PNG")
    assert prometheus.queries and set(prometheus.authorizations) == {
        "Basic " + base64.b64encode(b"me:s3cretpw").decode()}
    assert all(urllib.parse.parse_qs(urllib.parse.urlsplit(p).query)["token"] == ["s3cretTok"]
               for p in prometheus.paths)
    prometheus.mode = "refuse"
    refused = subprocess.run([*run, "--out", str(tmp_path / "y.png")], capture_output=True,
                             text=True, timeout=60, check=False)
    assert refused.returncode == 1
    assert f"Prometheus at http://***@127.0.0.1:{port}/?token=*** refused" in refused.stderr
    prometheus.mode = "empty"
    empty = subprocess.run([*run, "--out", str(tmp_path / "z.png")], capture_output=True,
                           text=True, timeout=60, check=False)
    assert empty.returncode == 1
    assert f"minutes at http://***@127.0.0.1:{port}/?token=***" in empty.stderr
    not_http = subprocess.run([*run[:3], "ftp://me:s3cretpw@h/", *run[4:], "--out", "w.png"],
                              capture_output=True, text=True, timeout=60, check=False)
    assert not_http.returncode == 2 and "is not an http:// or https:// URL" in not_http.stderr
    for result in (drawn, refused, empty, not_http):
        assert "s3cret" not in result.stdout + result.stderr


@pytest.mark.parametrize("value", ["nan", "1e-320", "0", "-1", "1e9"])
def test_a_task_time_a_replay_cannot_take_is_refused(scaler_file: Path, value: str) -> None:
    result = invoke("simulate", "-f", scaler_file, "--trace", "bursts", "--no-png",
                    "--service-seconds", value)
    assert result.exit_code == 2
    assert "is not from 1e-06 to 86,400 s (a day)" in result.output


def test_a_path_with_spaces_is_asked_encoded(scaler_file: Path,
                                            prometheus: FakePrometheus) -> None:
    given = f"{url(prometheus)}/pro metheus/?token=s3cretTok"
    result = invoke("simulate", "-f", scaler_file, "--prometheus", given, "--range", "10m",
                    "--step", "30s", "--no-png", "--no-progress")
    assert result.exit_code == 0, result.output
    assert urllib.parse.urlsplit(prometheus.paths[0]).path == "/pro%20metheus/api/v1/query_range"
    assert "s3cret" not in result.output


@pytest.mark.parametrize(
    ("given", "shown"),
    [
        pytest.param("/?s3cretBareToken", "?***", id="a-bare-query-key"),
        pytest.param("/?token=s3cretTok", "?token=***", id="a-query-value"),
    ],
)
def test_an_error_page_echoing_the_request_is_masked(
    scaler_file: Path, prometheus: FakePrometheus, given: str, shown: str
) -> None:
    prometheus.mode = "echo-404"
    result = CliRunner().invoke(cli.main, [
        "simulate", "-f", str(scaler_file), "--prometheus",
        f"http://user:s3cretPw@127.0.0.1:{prometheus.server_address[1]}{given}", "--no-png",
        "--no-progress"])
    assert result.exit_code == 1
    assert f"{shown} refused" in result.output and "404 page not found: /api/v1" in result.output
    assert "s3cret" not in result.output


def test_an_answer_that_never_ends_is_given_up(
    scaler_file: Path, prometheus: FakePrometheus, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tune, "PROMETHEUS_ANSWER_SECONDS", 0.5)
    prometheus.mode = "drip"
    result = CliRunner().invoke(cli.main, [
        "simulate", "-f", str(scaler_file), "--prometheus", url(prometheus), "--no-png",
        "--no-progress"])
    assert result.exit_code == 1
    assert "took more than 0.5 s to send its answer" in result.output


@pytest.mark.parametrize(
    ("given", "words"),
    [
        pytest.param("http://me:pw@[::1/", "is not a URL (an unclosed '[' in its host?)",
                     id="unclosed-ipv6"),
        pytest.param("http://me:pw@127.0.0.1:99999/", "'http://***@127.0.0.1:99999/' has a port "
                     "that is not a number from 0 to 65535", id="port-out-of-range"),
        pytest.param("http://x:port/", "has a port that is not a number", id="port-not-a-number"),
    ],
)
def test_a_malformed_prometheus_url_is_a_usage_error(
    scaler_file: Path, given: str, words: str
) -> None:
    result = invoke("simulate", "-f", scaler_file, "--prometheus", given, "--no-png")
    assert result.exit_code == 2 and words in result.output
    assert "pw@" not in result.output


@pytest.mark.parametrize("given", ["prometheus:9090", "ftp://x/"])
def test_a_prometheus_url_that_is_not_http_is_refused(scaler_file: Path, given: str) -> None:
    result = invoke("simulate", "-f", scaler_file, "--prometheus", given, "--no-png")
    assert result.exit_code == 2 and "is not an http:// or https:// URL" in result.output


def test_a_prometheus_that_does_not_answer(scaler_file: Path) -> None:
    server = FakePrometheus(("127.0.0.1", 0), Handler)
    port = server.server_address[1]
    server.server_close()  # nothing listens there now
    result = invoke("simulate", "-f", scaler_file, "--prometheus", f"http://127.0.0.1:{port}",
                    "--no-png")
    assert result.exit_code == 1
    assert f"Prometheus at http://127.0.0.1:{port} does not answer" in result.output


def test_a_prometheus_too_slow_to_answer(
    scaler_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()  # accepts the connection, never answers
    monkeypatch.setattr(tune, "PROMETHEUS_TIMEOUT", 0.3)
    try:
        port = listener.getsockname()[1]
        result = invoke("simulate", "-f", scaler_file, "--prometheus",
                        f"http://127.0.0.1:{port}", "--no-png")
    finally:
        listener.close()
    assert result.exit_code == 1
    assert "did not answer within 0.3 s" in result.output, result.output


# --- progress -----------------------------------------------------------------------------------


def test_progress_is_a_bar_redrawn_in_place_and_wiped_at_the_end() -> None:
    import io

    from queuescaler.tune.progress import Bar

    clock = iter([0.0, 0.0, 0.05, 0.5, 1.0, 2.0])
    stream = io.StringIO()
    bar = Bar(stream, bar=True, clock=lambda: next(clock))
    bar("replaying queuescaler (1/2)", 0.0)
    bar("replaying queuescaler (1/2)", 0.25)  # 50 ms later: not redrawn
    bar("replaying queuescaler (1/2)", 0.5)
    bar("replaying oracle (2/2)", 1.0)
    bar.close()
    drawn = stream.getvalue().split("\r")[1:]
    assert drawn[0].startswith("[------------------------]   0%  0 s  replaying queuescaler")
    assert drawn[1].startswith("[############------------]  50%  0 s  replaying queuescaler")
    assert drawn[2].startswith("[########################] 100%  1 s  replaying oracle (2/2)")
    assert drawn[3].strip() == "" and drawn[-1] == ""  # wiped, the cursor at the line's start
    assert "\n" not in stream.getvalue()


def test_without_a_terminal_progress_is_one_line_per_step(
    scaler_file: Path, csv_file: Path
) -> None:
    result = CliRunner().invoke(cli.main, ["simulate", "-f", str(scaler_file), "--csv",
                                           str(csv_file), "--compare", "--no-png"])
    assert result.exit_code == 0
    steps = [line for line in result.stderr.splitlines() if line.startswith("... ")]
    assert steps == ["... replaying queuescaler (1/3)", "... replaying keda-queue-length (2/3)",
                     "... replaying oracle (3/3)", "... replayed 3 policies"]
    forced = CliRunner().invoke(cli.main, ["recommend", "-f", str(scaler_file), "--csv",
                                           str(csv_file), "--progress"])
    assert "\r[" in forced.stderr and "] 100%" in forced.stderr and "trial 1: " in forced.stderr
