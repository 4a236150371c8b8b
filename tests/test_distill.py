"""Self-distillation: files survive interruptions (a torn last line is dropped before answering resumes), and the
instruction families."""

import json

import pytest

from refusion.distill.answers import done_ids, training_records


def test_a_torn_last_line_is_dropped_so_appending_resumes_on_a_clean_line(tmp_path):
    answers = tmp_path / "answers.jsonl"
    whole = [{"id": 1, "query": "q1", "response": "r1", "finished": True},
             {"id": 2, "query": "q2", "response": "", "finished": False}]
    answers.write_text("".join(json.dumps(r) + "\n" for r in whole) + '{"id": 3, "query": "q3", "resp')
    assert done_ids(answers) == {1, 2}
    assert [json.loads(line) for line in answers.read_text().splitlines()] == whole
    assert training_records(answers, tmp_path / "train.jsonl") == 1
    assert [json.loads(line) for line in (tmp_path / "train.jsonl").read_text().splitlines()] == [{"query": "q1", "response": "r1"}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["answers.jsonl", "train.jsonl"]


def test_everyday_families_are_varied_outside_the_default_mix_and_share_no_phrase_with_the_bench_prompts():
    from refusion.bench import builtin_prompts
    from refusion.bench.prompts import five_word_runs
    from refusion.distill.instructions import build_instructions

    default = build_instructions(500, seed=0)
    assert {r["family"] for r in default} == {"word_problem", "algebra", "code", "multiple_choice", "open"}
    everyday = build_instructions(2000, seed=1, families={"chat": 1.0, "list": 1.0})
    assert len(everyday) == 2000 and {r["family"] for r in everyday} == {"chat", "list"}
    bench = set().union(*map(five_word_runs, builtin_prompts()))
    assert not [r["query"] for r in everyday if five_word_runs(r["query"]) & bench]  # the bench's prompts stay unseen
    with pytest.raises(ValueError, match="unknown instruction families poems"):
        build_instructions(5, families={"poems": 1.0})
