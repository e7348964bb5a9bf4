import json

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from thresher.corpus.reference import ReferenceTask, read_reference, reference_pair, tokenize_task
from thresher.utils.errors import ThresherError


def test_layouts():
    assert reference_pair({"context": "a b", "continuation": "c"}) == ("a b", "c")
    assert reference_pair({"text": "a b c", "until_last": "a b", "last_word": "c"}) == ("a b", "c")
    squad = {"context": "Paris is in France.", "question": "Where is Paris?", "answers": {"text": ["France"], "answer_start": [12]}}
    assert reference_pair(squad) == ("Paris is in France.\nQuestion: Where is Paris?\nAnswer:", "France")
    assert reference_pair({"context": "x", "continuation": "  "}) is None
    assert reference_pair({"foo": 1}) is None


def test_read_jsonl_and_parquet_skip_bad_lines(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = tmp_path / "t.jsonl"
    p.write_text('{"context": "a", "continuation": "b"}\nnot json\n{"x": 1}\n{"context": "c", "continuation": "d"}\n')
    assert read_reference(p) == [("a", "b"), ("c", "d")]
    assert read_reference(p, limit=1) == [("a", "b")]
    pq.write_table(pa.table({"until_last": ["u v"], "last_word": ["w"]}), tmp_path / "t.parquet")
    assert read_reference(tmp_path / "t.parquet") == [("u v", "w")]
    with pytest.raises(ThresherError, match="not found"):
        read_reference(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text('{"x": 1}\n')
    with pytest.raises(ThresherError, match="no \\(context, continuation\\)"):
        read_reference(tmp_path / "empty.jsonl")


def test_split_is_disjoint_seeded_and_complete():
    task = ReferenceTask("t", [np.array([i]) for i in range(101)], [np.array([i + 1000]) for i in range(101)])
    a, b = task.split(0.3, seed=4)
    a2, b2 = task.split(0.3, seed=4)
    ids_a = {int(c[0]) for c in a.contexts}
    ids_b = {int(c[0]) for c in b.contexts}
    assert not ids_a & ids_b and ids_a | ids_b == set(range(101)) and len(b) == 30
    assert [c.tolist() for c in a.contexts] == [c.tolist() for c in a2.contexts]
    assert [c.tolist() for c in task.split(0.3, seed=5)[1].contexts] != [c.tolist() for c in b.contexts]


def test_tokenize_keeps_the_continuation_separate():
    vocab = {"[UNK]": 0, "the": 1, "cat": 2, "sat": 3}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    task = tokenize_task("t", [("the cat", "sat")], tok)
    assert task.contexts[0].tolist() == [1, 2] and task.continuations[0].tolist() == [3]


def test_a_limit_samples_the_file_seeded_in_file_order(tmp_path):
    import json

    from thresher.corpus.reference import read_reference

    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps({"context": f"c{i}", "continuation": f" x{i}"}) + "\n" for i in range(50)))
    assert [c for c, _ in read_reference(path, limit=10)] == [f"c{i}" for i in range(10)]  # no seed: the first rows
    a, b = read_reference(path, limit=10, sample_seed=0), read_reference(path, limit=10, sample_seed=0)
    ids = [int(c[1:]) for c, _ in a]
    assert a == b and len(a) == 10 and ids == sorted(ids) and ids != list(range(10)) and max(ids) > 20
    assert read_reference(path, limit=10, sample_seed=1) != a
    assert len(read_reference(path, limit=100, sample_seed=0)) == 50


def test_label_columns_from_a_config_merge_over_the_defaults():
    from thresher.config import DataConfig, run_config_from_dict

    cfg = run_config_from_dict({"data": {"label_columns": {"topic": "topic_v2", "cluster": ""}}})
    assert cfg.data.label_columns == {**DataConfig().label_columns, "topic": "topic_v2", "cluster": ""}
