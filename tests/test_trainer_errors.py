"""`torchrun -m gradatim.trainer` failing on a bad input, against the real SeaweedFS: the one line that says why lands
in error.json beside results.json and in the container's termination message, the traceback stays in the log, and
the exit status is not 0."""

from __future__ import annotations

import uuid

import pytest

from gradatim.storage import s3
from gradatim.storage.runfiles import read_run_files
from gradatim.api.runfiles import TERMINATION_LOG_ENV, TrainerError
from tests.trainer_harness import run_trainer, stage_spec

PARAMS = {"batchSize": 8, "microBatchSize": 8, "maxSteps": 1, "maxLength": 64, "precision": "fp32", "gradientCheckpointing": False}


@pytest.mark.parametrize("case", ["unknown-builtin-model", "missing-s3-input"])
def test_a_bad_input_fails_with_one_line_in_error_json_and_the_termination_message(cluster, tmp_path, case):
    missing = f"s3://{cluster.s3_bucket}/trainer-tests/never-written-{uuid.uuid4().hex[:8]}/"
    inputs, expected = {
        "unknown-builtin-model": ({"model": {"builtin": "tiny-foo"}, "data": [{"builtin": "tiny-math:train:16"}]},
                                  "inputs.model: builtin model 'tiny-foo' is unknown; use tiny-model (freshly initialised) or tiny-teacher "
                                  "(trained on worked solutions)"),
        "missing-s3-input": ({"model": {"builtin": "tiny-model"}, "data": [{"builtin": "tiny-math:train:16"}, {"uri": missing}]},
                             f"inputs.data[1] ({missing}): no such artifact (no _manifest.json: nothing was written there, or its upload "
                             "never finished); check the URI"),
    }[case]
    spec = stage_spec(cluster, "sft", PARAMS, inputs)
    termination_log = tmp_path / "termination-log"
    result = run_trainer(cluster, spec, tmp_path, timeout=300, env={TERMINATION_LOG_ENV: str(termination_log)})
    log = result.stdout + result.stderr
    assert result.returncode != 0, log[-3000:]
    record = read_run_files(cluster.s3_client(), spec.output.uri, results=False, progress=False, error=True).error
    assert record is not None and record.message == expected, log[-3000:]
    assert record.attempt == spec.attempt and record.rank == 0 and record.exit_code == 1
    assert TrainerError.model_validate_json(termination_log.read_text()) == record
    assert "Traceback" in log and f"Failed: {expected}" in log, "the traceback and the one line both stay in the pod log"
    assert s3.read_json(cluster.s3_client(), spec.output.uri + "results.json") is None
