"""Loading a checkpoint is bounded in time and memory whatever the file holds: object graphs of shared
references, tensor views far larger than their storage, provenance records of the wrong types."""
import time

import pytest
import torch

from common.checkpoint import LEGACY_FORMAT, Checkpoint, content_digest, read_checkpoint, save_checkpoint
from common.errors import UserError
from common.run_state import RunState
from conftest import QUICK, run_script


def _explosive():
    """A few hundred bytes on disk that unfold to 10**40 list nodes: forty levels of ten shared references."""
    x = [0]
    for _ in range(40):
        x = [x] * 10
    return x


def _good() -> dict:
    record = Checkpoint(None, "ours", {"w": torch.ones(3)}, RunState(epoch=1)).to_dict()
    record["provenance"] = [{"code": {"commit": "a" * 40, "dirty": False}, "versions": {"torch": "2.14.1"}}]
    record["digest"] = content_digest(record)
    return record


def _legacy() -> dict:
    """A file of the format before the digest: read without one, every field still checked."""
    record = {**_good(), "format": LEGACY_FORMAT}
    del record["digest"]
    return record


def _refused(record: dict, path, *fragments):
    save_checkpoint(record, path)
    started = time.monotonic()
    with pytest.raises(UserError) as caught:
        read_checkpoint(path)
    assert time.monotonic() - started < 10  # refused, not walked
    message = str(caught.value)
    assert len(message.splitlines()) == 1 and all(f in message for f in fragments), message
    return message


def test_the_base_checkpoint_reads(tmp_path):
    save_checkpoint(_good(), tmp_path / "good.pth")
    assert read_checkpoint(tmp_path / "good.pth").state.provenance[0]["versions"] == {"torch": "2.14.1"}


def test_shared_reference_nesting_beside_a_digest_is_refused_before_the_walk_ends(tmp_path):
    record = {**_good(), "extra": _explosive()}  # the digest walks every key, known or not
    _refused(record, tmp_path / "nest.pth", "damaged or crafted", "levels of nesting")


def test_shared_reference_nesting_in_provenance_without_a_digest_is_refused_on_reading(tmp_path):
    record = {**_legacy(), "provenance": [{"code": {"commit": "a"}, "notes": _explosive()}]}
    _refused(record, tmp_path / "prov.pth", "provenance must be a list of records")


@pytest.mark.parametrize("with_digest", [False, True])
def test_a_tensor_view_larger_than_its_storage_is_refused_before_it_is_materialised(tmp_path, with_digest):
    record = _good()
    record["model"] = {"w": torch.zeros(1).as_strided((100_000, 100_000), (0, 0))}  # 40 GB if copied
    if with_digest:
        record["digest"] = "sha256:" + "0" * 64  # whatever it says: the walk must stop at the view
        _refused(record, tmp_path / "view.pth", "tensor view of 10000000000 elements")
    else:
        _refused({**_legacy(), "model": record["model"]}, tmp_path / "view.pth",
                 "model tensor w holds a view of 10000000000 elements")


@pytest.mark.parametrize("provenance", [
    [{"code": "abc"}], [{"versions": ["torch"]}], [{"versions": {"torch": {"x": 1}}}], ["a record"],
    [{1: "non-string key"}], [{"code": {"commit": "a"}, "deep": [[[[[[[[[["x"]]]]]]]]]]}],
], ids=["code a string", "versions a list", "a version a dict", "a string", "an int key", "too deep"])
def test_provenance_records_of_the_wrong_types_are_refused(tmp_path, provenance):
    record = _good()
    record["provenance"] = provenance
    record["digest"] = content_digest(record)  # as a careful forger would
    _refused(record, tmp_path / "p.pth", "provenance must be a list of records")


def test_a_resume_from_such_a_file_is_one_sentence(tmp_path):
    record = _good()
    record["provenance"] = [{"code": "abc"}]
    record["digest"] = content_digest(record)
    save_checkpoint(record, tmp_path / "p.pth")
    out = run_script("cifar10/train.py", *QUICK, "--resume", tmp_path / "p.pth", "--output-dir", tmp_path, check=False)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert "provenance must be a list of records" in out.stderr.strip().splitlines()[-1]


def test_a_file_of_the_current_format_without_its_digest_is_refused(tmp_path):
    record = _good()
    record["model"] = {"w": torch.full((3,), 7.0)}  # tampered, and the digest deleted to hide it
    del record["digest"]
    _refused(record, tmp_path / "nodigest.pth", "lacks the digest that every file of its format", "not used")
    save_checkpoint(_legacy(), tmp_path / "legacy.pth")  # the earlier format, written before digests: reads
    assert read_checkpoint(tmp_path / "legacy.pth").state.position == (1, 0)


def test_a_file_with_our_fields_and_its_format_deleted_is_refused(tmp_path):
    record = _good()
    del record["format"]  # it would otherwise pass for another program's layout ('model' holds a state dict)
    _refused(record, tmp_path / "noformat.pth", "no 'format' key", "digest")


def test_a_file_of_the_earlier_format_with_a_digest_is_still_verified(tmp_path):
    record = {**_good(), "format": LEGACY_FORMAT}
    record["digest"] = content_digest(record)
    save_checkpoint(record, tmp_path / "v1.pth")
    assert read_checkpoint(tmp_path / "v1.pth").state.position == (1, 0)  # what earlier versions wrote: reads
    record["model"] = {"w": torch.full((3,), 7.0)}
    _refused(record, tmp_path / "v1_tampered.pth", "no longer match the digest")
