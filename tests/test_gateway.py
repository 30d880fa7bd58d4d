"""The WebSocket gateway: protocol schema and helpers (unit), then for real — a tritonserver on the tiny parity
graphs, the gateway in front (`python -m gateway` from .venv-serve), WebSocket clients: native sessions equal
`mtasr-client`'s (stream_audio) for both tasks and timings, 16 concurrent connections each equal its solo run, bad
frames get error events and the session stays consistent, keys / origins / limits / idle / TLS, a vanished client's
sequence freed at once, Triton going away -> error + 1011, the OpenAI-compatible mode, the nginx edge, and the
gateway `make serve` starts."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import websockets
from conftest import assert_same_seglst
from gateway_client import DATA, as_float, native_session, pcm16, run_native, serve_python, served_stack

from client.stream import stream_audio
from gateway import protocol
from gateway.limits import Pacer
from gateway.process import GatewayProcess
from gateway.protocol import ErrorCode, ProtocolError, parse_client_text
from gateway.resample import Resampler, to_int16
from gateway.server import origin_allowed, presented_keys
from gateway.upstream import PieceBuffer
from mtasr.audio import read_audio, synth_conversation
from mtasr.spec import DIARIZATION

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------ unit
def test_start_event_parsing():
    s = parse_client_text(json.dumps({"type": "start", "task": "diarize", "timing": "nemo", "max_speakers": 2,
                                      "session_id": "call-7"}))
    assert (s.model, s.timing, s.max_speakers, s.session_id) == (DIARIZATION, "nemo", 2, "call-7")
    assert parse_client_text('{"type": "start"}') == protocol.Start()
    assert isinstance(parse_client_text('{"type": "end"}'), protocol.End)
    for bad in ["not json", "[]", '{"type": "stop"}', '{"type": "start", "task": "translate"}',
                '{"type": "start", "timing": "wall"}', '{"type": "start", "max_speakers": -1}',
                '{"type": "start", "max_speakers": true}', '{"type": "start", "lang": "en"}',
                '{"type": "start", "session_id": ""}', '{"type": "end", "now": 1}', "x" * 5000]:
        with pytest.raises(ProtocolError) as err:
            parse_client_text(bad)
        assert err.value.code is ErrorCode.BAD_MESSAGE, bad


def test_audio_frame_checks():
    assert protocol.pcm16_samples(b"\0" * 320, 1000) == 160
    with pytest.raises(ProtocolError) as err:
        protocol.pcm16_samples(b"\0" * 321, 1000)
    assert err.value.code is ErrorCode.BAD_AUDIO
    with pytest.raises(ProtocolError) as err:
        protocol.pcm16_samples(b"\0" * 1002, 1000)
    assert err.value.code is ErrorCode.FRAME_TOO_LARGE


def test_piece_buffer_regroups_without_losing_or_emptying():
    rng = np.random.default_rng(0)
    x = rng.integers(-3000, 3000, 50_000).astype(np.int16)
    buf, out, i = PieceBuffer(2560), [], 0
    for n in rng.integers(1, 7000, 100):
        out += buf.push(x[i: i + n])
        i += n
        if i >= x.size:
            break
    assert all(p.size == 2560 for p in out) and 0 < buf.pending <= 2560
    assert np.array_equal(np.concatenate(out + [buf.rest()]), x[:i])


def test_pacer_allows_burst_then_factor():
    now = [0.0]
    pacer = Pacer(factor=2.0, burst_s=1.0, clock=lambda: now[0])
    assert pacer.delay(16000) == 0.0  # the burst
    assert pacer.delay(32000) == pytest.approx(1.0)  # 2 s more audio at 2x real time: due at t=1 s
    now[0] = 5.0
    assert pacer.delay(16000) == 0.0


def test_resampler_pieces_equal_whole_and_keep_a_tone():
    t = np.arange(24000 * 2) / 24000
    x = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    whole = Resampler(24000, 16000)(x)
    r, parts, i = Resampler(24000, 16000), [], 0
    for n in [1, 7, 480, 2400, 13, 10000, 99999]:
        parts.append(r(x[i: i + n]))
        i += n
    assert whole.size == 32000 and np.allclose(np.concatenate(parts), whole, atol=1e-6)
    ref = 0.5 * np.sin(2 * np.pi * 440 * np.arange(32000) / 16000)
    delay = (Resampler(24000, 16000).h.size - 1) / 2 / 48000  # group delay of the filter
    ref = 0.5 * np.sin(2 * np.pi * 440 * (np.arange(32000) / 16000 - delay))
    assert np.max(np.abs(whole[1000:-1000] - ref[1000:-1000])) < 1e-2
    assert to_int16(np.array([1.5, -1.5, 0.25], np.float32)).tolist() == [32767, -32768, 8192]


def test_origin_and_key_rules():
    from websockets.datastructures import Headers

    assert origin_allowed(None, "h:1", ())  # non-browser client
    assert origin_allowed("http://h:1", "h:1", ()) and not origin_allowed("http://evil:1", "h:1", ())
    assert origin_allowed("https://app.example", "h:1", ("https://app.example",))
    assert origin_allowed("https://any", "h:1", ("*",)) and not origin_allowed("file://x", "h:1", ())
    h = Headers([("Sec-WebSocket-Protocol", "mtasr.v1, mtasr-key.k1"), ("Authorization", "Bearer k2"),
                 ("mtasr-api-key", "k3"), ("Sec-WebSocket-Protocol", "realtime, openai-insecure-api-key.k4")])
    assert sorted(presented_keys(h)) == ["k1", "k2", "k3", "k4"]


def test_docs_tables_are_generated_from_the_schema():
    text = (ROOT / "docs" / "gateway.md").read_text()
    begin, end = text.index(protocol.DOCS_BEGIN) + len(protocol.DOCS_BEGIN), text.index(protocol.DOCS_END)
    assert text[begin:end].strip() == protocol.protocol_markdown(), "run: python -m gateway.protocol"


def test_page_palette_is_the_clients():
    from client.cli import SPEAKER_COLORS

    js = (ROOT / "gateway" / "static" / "app.js").read_text()
    palette = json.loads(re.search(r"const PALETTE = (\[[^\]]*\]);", js)[1])
    assert palette == [hexcolour for _, hexcolour in SPEAKER_COLORS]


def test_gateway_pins_agree():
    import tomllib

    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["gateway"]
    serve = {ln.split("==")[0]: ln for ln in (ROOT / "docker" / "requirements-serve.txt").read_text().splitlines()
             if "==" in ln and not ln.startswith("#")}
    for pin in extra:
        assert serve.get(pin.split("==")[0]) == pin, f"{pin} differs in docker/requirements-serve.txt"


# ------------------------------------------------------------------------------------------------ for real
server = pytest.mark.server  # these start a tritonserver and the gateway (nginx too): tests/conftest.py's tiers


@pytest.fixture(scope="module")
def stack(tiny_parity, tmp_path_factory):
    work = tmp_path_factory.mktemp("gateway")
    with served_stack(tiny_parity["work"] / "graphs", work, ("--realtime-factor", "1000")) as (triton, gw):
        yield {"triton": triton, "gw": gw, "url": gw.url("/v1/stream"), "work": work}


def _ref(stack, audio, **kw):
    return stream_audio(stack["triton"].grpc_url, audio, session_id=kw.pop("session_id", "stream"), **kw).seglst


@server
@pytest.mark.parametrize("name", ["two_speakers_overlap", "three_speakers"])
def test_native_equals_mtasr_client(stack, name):
    audio = read_audio(DATA / f"{name}.flac")
    pcm = pcm16(audio)
    want = _ref(stack, as_float(pcm), session_id=name)
    got = run_native(stack["url"], pcm, start={"session_id": name}, frame=1234)
    assert want and len({s["speaker"] for s in want}) >= 2
    assert got.transcript == want  # the same sequence protocol: exact
    assert sorted(got.of("final"), key=lambda e: e["segment"]["start_time"]) and \
        sorted((e["segment"] for e in got.of("final")), key=lambda s: (s["start_time"], s["speaker"])) == \
        sorted(want, key=lambda s: (s["start_time"], s["speaker"]))  # every final sent once, as final
    frames = sum(len(e["frames"]) for e in got.of("activity"))
    assert frames * 0.08 >= len(audio) / 16000 - 0.2 and got.end["usage"]["seconds"] == round(len(pcm) / 16000, 3)
    assert got.close_code == 1000 and not got.of("error")
    assert_same_seglst(got.transcript, stream_audio(stack["triton"].grpc_url, audio, session_id=name).seglst)


@server
def test_diarize_task_equals_mtasr_client_diarize(stack):
    audio = as_float(pcm16(read_audio(DATA / "three_speakers.flac")))
    want = _ref(stack, audio, model=DIARIZATION)
    got = run_native(stack["url"], pcm16(audio), start={"task": "diarize"})
    assert want and got.transcript == want and all(s["words"] == "" for s in want)


@server
def test_nemo_timing(stack):
    audio = as_float(pcm16(read_audio(DATA / "two_speakers_overlap.flac")))
    want = _ref(stack, audio, timing="nemo")
    got = run_native(stack["url"], pcm16(audio), start={"timing": "nemo"})
    assert want and got.transcript == want and not got.of("final") and got.of("interim")[-1]["segments"] == want


@server
def test_16_concurrent_connections_equal_solo(stack):
    audios = [pcm16(synth_conversation(4.0 + i % 3, n_speakers=2 + i % 2, seed=70 + i)) for i in range(16)]
    solo = [run_native(stack["url"], a).transcript for a in audios]

    async def together():
        return await asyncio.gather(*(native_session(stack["url"], a, realtime=4.0) for a in audios))

    both = asyncio.run(together())
    assert all(s for s in solo)
    assert [r.transcript for r in both] == solo
    assert all(r.close_code == 1000 and not r.of("error") for r in both)


@server
def test_bad_frames_get_errors_and_the_session_stays_consistent(stack):
    audio = pcm16(read_audio(DATA / "two_speakers_overlap.flac"))
    clean = run_native(stack["url"], audio).transcript
    inject = {3: b"\x01\x02\x03", 5: "not json", 7: json.dumps({"type": "start"}), 9: json.dumps({"type": "x"}),
              11: b"\0" * (256 * 1024 + 2)}
    got = run_native(stack["url"], audio, inject=inject)
    codes = [e["code"] for e in got.of("error")]
    assert codes == ["bad_audio", "bad_message", "late_start", "bad_message", "frame_too_large"], codes
    assert got.transcript == clean and got.close_code == 1000


@server
def test_max_speakers_is_sent_on_start(stack):
    audio = pcm16(read_audio(DATA / "three_speakers.flac"))
    got = run_native(stack["url"], audio, start={"max_speakers": 1})
    assert got.close_code == 1000 and not got.of("error") and got.transcript
    assert len({s["speaker"] for s in got.transcript}) == 1  # the server honours the cap (3 speakers without it)
    assert len({s["speaker"] for s in run_native(stack["url"], audio).transcript}) > 1


@server
def test_client_vanishing_frees_the_sequence_at_once(stack):
    """No close frame, no END from the client: the gateway ENDs the sequence itself, long before the server's 5 s
    idle timeout would."""
    triton = stack["triton"]
    audio = pcm16(read_audio(DATA / "three_speakers.flac"))

    async def vanish():
        ws = await websockets.connect(stack["url"])
        for i in range(0, 16000 * 3, 1600):
            await ws.send(audio[i: i + 1600].tobytes())
        await asyncio.sleep(0.5)
        assert triton.metric("mtasr_active_sessions") == 1
        ws.transport.abort()  # the client's process dies: TCP reset
        t0 = time.monotonic()
        while triton.metric("mtasr_active_sessions") > 0 and time.monotonic() - t0 < 10:
            await asyncio.sleep(0.05)
        return time.monotonic() - t0

    freed_s = asyncio.run(vanish())
    print(f"sequence freed {freed_s:.2f} s after the client vanished")
    assert freed_s < 2.0  # the server's own idle expiry is 5 s
    assert triton.metric("mtasr_sessions_expired_total") == 0


@server
def test_rate_limit_paces_a_fast_sender(stack, tmp_path):
    audio = pcm16(synth_conversation(5.0, n_speakers=2, seed=3))
    with GatewayProcess(stack["triton"].grpc_url, args=("--realtime-factor", "4", "--burst-s", "1"),
                        python=serve_python(), log_path=tmp_path / "gw.log") as gw:
        t0 = time.monotonic()
        got = run_native(gw.url("/v1/stream"), audio, frame=16000)
        took = time.monotonic() - t0
    assert got.transcript == run_native(stack["url"], audio).transcript
    assert took >= (5.0 - 1.0) / 4 - 0.05, took  # 4 s past the burst at 4x real time


@server
def test_keys_origins_and_connection_limits(stack, tmp_path):
    key = "k" * 8 + "-secret-token-1"
    (tmp_path / "key").write_text(key + "\n")
    audio = pcm16(synth_conversation(2.0, n_speakers=2, seed=5))
    with GatewayProcess(stack["triton"].grpc_url, python=serve_python(), log_path=tmp_path / "gw.log",
                        args=("--api-key-file", str(tmp_path / "key"), "--allow-origin", "https://app.example",
                              "--max-connections-per-client", "2")) as gw:
        url = gw.url("/v1/stream")
        host = f"http://127.0.0.1:{gw.port}"

        def status(**kw) -> int:
            async def go():
                try:
                    async with websockets.connect(url, **kw):
                        return 101
                except websockets.InvalidStatus as exc:
                    return exc.response.status_code
            return asyncio.run(go())

        assert status() == 401
        assert status(additional_headers={"mtasr-api-key": "wrong" * 4}) == 401
        assert status(subprotocols=["mtasr.v1", "mtasr-key.nope"]) == 401
        assert status(additional_headers={"Authorization": f"Bearer {key}"}) == 101
        ok = run_native(url, audio, subprotocols=["mtasr.v1", f"mtasr-key.{key}"], origin=host)
        assert ok.subprotocol == "mtasr.v1" and ok.transcript == run_native(stack["url"], audio).transcript
        hdr = {"additional_headers": {"mtasr-api-key": key}}
        assert status(origin="http://evil.example", **hdr) == 403
        assert status(origin="https://app.example", **hdr) == 101

        async def three():
            a = await websockets.connect(url, **hdr)
            b = await websockets.connect(url, **hdr)
            try:
                await websockets.connect(url, **hdr)
                return 101
            except websockets.InvalidStatus as exc:
                return exc.response.status_code
            finally:
                await a.close()
                await b.close()

        assert asyncio.run(three()) == 429
        import urllib.request

        page = urllib.request.urlopen(f"{host}/", timeout=5)  # noqa: S310 - the page needs no key
        assert page.status == 200 and b"/static/app.js" in page.read()
        assert "default-src 'self'" in page.headers["Content-Security-Policy"]


@server
def test_idle_timeout_ends_the_session(stack, tmp_path):
    audio = pcm16(synth_conversation(2.0, n_speakers=2, seed=6))
    with GatewayProcess(stack["triton"].grpc_url, args=("--idle-timeout-s", "1"), python=serve_python(),
                        log_path=tmp_path / "gw.log") as gw:
        got = run_native(gw.url("/v1/stream"), audio, send_end=False)
    assert [e["code"] for e in got.of("error")] == ["idle_timeout"] and got.close_code == 1008
    assert got.transcript and got.end["usage"]["seconds"] == 2.0


@server
def test_tls(stack, tmp_path):
    from edge.cluster import tls_pair

    if shutil.which("openssl") is None:
        pytest.skip("no openssl: run `make nginx`")
    cert, key = tls_pair(tmp_path)
    audio = pcm16(synth_conversation(2.0, n_speakers=2, seed=7))
    with GatewayProcess(stack["triton"].grpc_url, args=("--tls-cert", str(cert), "--tls-key", str(key)),
                        python=serve_python(), log_path=tmp_path / "gw.log", tls=True) as gw:
        ctx = ssl.create_default_context(cafile=str(cert))
        got = run_native(gw.url("/v1/stream"), audio, ssl=ctx)
    assert got.transcript == run_native(stack["url"], audio).transcript


@server
def test_triton_going_away_gives_error_and_1011(tiny_parity, tmp_path):
    audio = pcm16(read_audio(DATA / "long_three_speakers.flac"))
    with served_stack(tiny_parity["work"] / "graphs", tmp_path) as (triton, gw):
        async def go():
            task = asyncio.create_task(native_session(gw.url("/v1/stream"), audio, realtime=4.0))
            await asyncio.sleep(3.0)
            triton.proc.kill()
            return await asyncio.wait_for(task, 60)

        got = asyncio.run(go())
    errors = got.of("error")
    assert [e["code"] for e in errors] == ["upstream_unavailable"], got.events[-3:]
    assert got.close_code == 1011 and not got.of("end")


@server
def test_server_full_gives_error_and_1013_without_the_sequence_id(tiny_parity, tmp_path):
    audio = pcm16(read_audio(DATA / "three_speakers.flac"))
    with served_stack(tiny_parity["work"] / "graphs", tmp_path, max_sessions=1) as (triton, gw):
        async def go():
            first = asyncio.create_task(native_session(gw.url("/v1/stream"), audio, realtime=2.0))
            await asyncio.sleep(1.5)  # the first holds the only place
            second = await native_session(gw.url("/v1/stream"), audio[:32000])
            return await first, second

        first, second = asyncio.run(go())
    assert first.close_code == 1000 and first.transcript
    assert [e["code"] for e in second.of("error")] == ["server_full"] and second.close_code == 1013
    assert not re.search(r"\d{10,}", json.dumps(second.events))  # no sequence id in anything the client is told


@server
def test_openai_realtime_mode(stack):
    """An OpenAI Realtime transcription client: session.update, base64 PCM16 at 24 kHz, commit; its segment events
    equal mtasr-client on the audio the gateway resampled, and every item's deltas add up to its transcript."""
    from scipy.signal import resample_poly

    audio16 = read_audio(DATA / "two_speakers_overlap.flac")
    pcm24 = pcm16(resample_poly(audio16, 3, 2).astype(np.float32))
    resampler = Resampler(24000, 16000)
    seen16 = np.concatenate([to_int16(resampler(as_float(pcm24[i: i + 2400]))) for i in range(0, pcm24.size, 2400)])
    want = _ref(stack, as_float(seen16))

    async def go(query: str):
        events = []
        async with websockets.connect(stack["url"].replace("/v1/stream", "/v1/realtime") + query,
                                      subprotocols=["realtime"]) as ws:
            events.append(json.loads(await ws.recv()))
            update = {"type": "transcription_session.update", "session": {"input_audio_format": "pcm16"}} if query \
                else {"type": "session.update", "session": {"type": "transcription", "audio": {"input": {
                    "format": {"type": "audio/pcm", "rate": 24000}, "transcription": {"model": "any"}}}}}
            await ws.send(json.dumps(update))
            events.append(json.loads(await ws.recv()))
            for i in range(0, pcm24.size, 2400):
                await ws.send(json.dumps({"type": "input_audio_buffer.append",
                                          "audio": base64.b64encode(pcm24[i: i + 2400].tobytes()).decode()}))
            await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
            await ws.send(json.dumps({"type": "bogus.event", "event_id": "e1"}))
            try:
                while True:
                    events.append(json.loads(await asyncio.wait_for(ws.recv(), 30)))
                    if events[-1]["type"] == "error":
                        break
            except asyncio.TimeoutError:
                pass
        return events

    for query, prefix in (("", "session"), ("?intent=transcription", "transcription_session")):
        events = asyncio.run(go(query))
        assert [e["type"] for e in events[:2]] == [f"{prefix}.created", f"{prefix}.updated"]
        assert all("event_id" in e for e in events)
        segs = [e for e in events if e["type"] == "conversation.item.input_audio_transcription.segment"]
        got = [{"speaker": e["speaker"], "words": e["text"], "start_time": e["start"], "end_time": e["end"],
                "session_id": "stream"} for e in segs]
        assert_same_seglst(sorted(got, key=lambda s: (s["start_time"], s["speaker"])),
                           sorted(want, key=lambda s: (s["start_time"], s["speaker"])))
        by_item: dict[str, str] = {}
        committed = set()
        for e in events:
            if e["type"] == "input_audio_buffer.committed":
                committed.add(e["item_id"])
            elif e["type"].endswith(".delta"):
                assert e["item_id"] in committed
                by_item[e["item_id"]] = by_item.get(e["item_id"], "") + e["delta"]
            elif e["type"].endswith(".completed"):
                assert e["transcript"] == by_item.get(e["item_id"], e["transcript"]) and e["usage"]["type"] == \
                    "duration"
        assert events[-1]["type"] == "error" and events[-1]["error"]["event_id"] == "e1"


@server
@pytest.mark.skipif(shutil.which("nginx") is None and not os.environ.get("CI"), reason="no nginx: run `make nginx`")
def test_edge_proxies_websocket_upgrades(stack, tmp_path):
    """The deploy/edge template in front of the gateway: wss:// through nginx (TLS), the page through it too."""
    from client.server import free_ports
    from edge.cluster import Edge, tls_pair
    from edge.render import EdgeSettings, upstream_lines

    cert, key = tls_pair(tmp_path)
    port = free_ports(1)[0]
    gw = stack["gw"]
    settings = EdgeSettings(upstream_lines([stack["triton"].grpc_url]), listen=f"127.0.0.1:{port}",
                            tls_cert=str(cert), tls_key=str(key), gateways=upstream_lines([f"127.0.0.1:{gw.port}"]))
    audio = pcm16(read_audio(DATA / "two_speakers_overlap.flac"))
    with Edge(settings, tmp_path / "edge", port):
        ctx = ssl.create_default_context(cafile=str(cert))
        got = run_native(f"wss://localhost:{port}/v1/stream", audio, ssl=ctx, origin=f"https://localhost:{port}")
        import urllib.request

        page = urllib.request.urlopen(f"https://localhost:{port}/", context=ctx, timeout=5)  # noqa: S310
        assert page.status == 200 and b"/static/app.js" in page.read()
    assert got.transcript == run_native(stack["url"], audio).transcript and got.close_code == 1000


@server
def test_make_serve_starts_the_gateway(tiny_parity, tmp_path):
    """`make serve` (tritonserver + gateway through the launcher): a native client gets mtasr-client's segments."""
    from client.server import free_ports

    http, grpc, metrics, gwp = free_ports(4)
    cmd = ["make", "-s", "serve", f"GRAPHS={tiny_parity['work'] / 'graphs'}", f"REPO={tmp_path / 'repo'}",
           f"HTTP_PORT={http}", f"GRPC_PORT={grpc}", f"METRICS_PORT={metrics}", f"GATEWAY_PORT={gwp}",
           "PRESET=70_13"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=open(tmp_path / "serve.log", "wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while "gateway ready" not in (tmp_path / "serve.log").read_text(errors="replace"):
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(0.5)
        audio = pcm16(read_audio(DATA / "two_speakers_overlap.flac"))
        got = run_native(f"ws://127.0.0.1:{gwp}/v1/stream", audio)
        want = stream_audio(f"127.0.0.1:{grpc}", as_float(audio), session_id="stream").seglst
        assert want and got.transcript == want
        assert f"page http://127.0.0.1:{gwp}/" in (tmp_path / "serve.log").read_text()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # our own process group (make, the launcher, its children)
        proc.wait(60)


@server
def test_loadgen_websocket_reports_cpu_per_session_second(stack):
    """`client.loadgen --websocket` at smoke size: every session succeeds, CPU figures for the named processes."""
    from client.loadgen import make_audios, run_ws_sessions

    gw, triton = stack["gw"], stack["triton"]
    out = run_ws_sessions(stack["url"], 4, make_audios(3.0, 160.0, variants=2), spread_s=0.2, progress=False,
                          cpu_pids={"gateway": gw.pid, "tritonserver": triton.pid})
    assert out["errors"] == [] and 10.0 <= out["session_seconds"] <= 12.0
    assert out["cpu_ms_per_session_second"]["gateway"] > 0 and out["cpu_ms_per_session_second"]["tritonserver"] > 0
    # real time: sessions take their audio's duration, less the last 160 ms piece (sent at its start; seen 0.9498)
    assert out["rtf_max"] >= 1 - 0.16 / 3.0 - 0.01
