"""Self-distillation files survive interruptions: a torn last line is dropped before answering resumes."""

import json

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
