"""HF safetensors -> Orbax conversion: bit-exact round trip, sharded loading, and bad input."""

import json

import jax
import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file

from dllm_jax import checkpoint
from dllm_jax.models import safetensors_io
from dllm_jax.models.safetensors_io import CheckpointError
from tests import hf_fixtures as fx


def _read_all(directory):
  infos = safetensors_io.scan_checkpoint(directory)
  return {key: safetensors_io.read_tensor(key, info) for key, info in infos.items()}


@pytest.mark.parametrize("family,dtype,shards", [("llada", np.float32, 3),
                                                 ("dream", ml_dtypes.bfloat16, 2),
                                                 ("dream", np.float32, 1)])
def test_round_trip_is_bit_exact(tmp_path, family, dtype, shards):
  cfg = fx.llada_hf_config() if family == "llada" else fx.dream_hf_config()
  tensors = fx.random_tensors(cfg, seed=5, dtype=dtype)
  fx.write_checkpoint(tmp_path / "hf", cfg, tensors, num_shards=shards)
  config = checkpoint.convert_hf(tmp_path / "hf", tmp_path / "jax", buffer_bytes=20_000)
  # Reading in small row chunks gives the same bits as reading whole tensors.
  infos = safetensors_io.scan_checkpoint(tmp_path / "hf")
  key = next(k for k in infos if k.endswith("q_proj.weight"))
  np.testing.assert_array_equal(
      safetensors_io.read_tensor(key, infos[key], transpose=True, chunk_bytes=100),
      np.ascontiguousarray(tensors[key].T))
  files = checkpoint.export_hf(tmp_path / "jax", tmp_path / "back", max_shard_bytes=60_000)
  assert len(files) > 1 and (tmp_path / "back" / "model.safetensors.index.json").is_file()
  back = _read_all(tmp_path / "back")
  assert sorted(back) == sorted(tensors)
  for key, want in tensors.items():
    got = back[key]
    assert got.dtype == want.dtype and got.shape == want.shape, key
    assert got.tobytes() == want.tobytes(), key
  # The exported config.json reads back to the same architecture.
  again = checkpoint.convert_hf(tmp_path / "back", tmp_path / "jax2")
  assert again == config


def test_tokenizer_files_are_carried_over(tmp_path):
  cfg = fx.llada_hf_config()
  fx.write_checkpoint(tmp_path / "hf", cfg, fx.random_tensors(cfg))
  (tmp_path / "hf" / "tokenizer_config.json").write_text('{"chat_template": "{{ x }}"}')
  (tmp_path / "hf" / "tokenizer.json").write_text("{}")
  checkpoint.convert_hf(tmp_path / "hf", tmp_path / "jax")
  copied = sorted(p.name for p in (tmp_path / "jax" / "tokenizer").iterdir())
  assert copied == ["tokenizer.json", "tokenizer_config.json"]
  assert json.loads((tmp_path / "jax" / "tokenizer" / "tokenizer_config.json").read_text()) == {
      "chat_template": "{{ x }}"}


def test_load_onto_a_mesh(tmp_path):
  cfg = fx.llada_hf_config()
  fx.write_checkpoint(tmp_path / "hf", cfg, fx.random_tensors(cfg))
  checkpoint.convert_hf(tmp_path / "hf", tmp_path / "jax")
  mesh = jax.make_mesh((2, 4), ("data", "model"),
                       axis_types=(jax.sharding.AxisType.Auto,) * 2)
  params, config = checkpoint.load(tmp_path / "jax", mesh=mesh)
  kernel = params["layers"][0]["mlp"]["gate_proj"]["kernel"]
  assert kernel.sharding.mesh.shape == mesh.shape
  assert kernel.addressable_shards[0].data.shape == (config.hidden_size,
                                                     config.mlp_hidden_size // 4)


def test_save_and_load_trained_params(tmp_path):
  from dllm_jax.models import init_params, llada_tiny
  config = llada_tiny()
  params = init_params(config, seed=3)
  checkpoint.save(tmp_path / "ckpt", params, config)
  restored, loaded = checkpoint.load(tmp_path / "ckpt")
  assert loaded == config
  jax.tree.map(np.testing.assert_array_equal, restored, params)
  with pytest.raises(FileExistsError):
    checkpoint.save(tmp_path / "ckpt", params, config)


# ----------------------------------------------------------------------------------------------
# Bad input: each error names the tensor or file, and no output directory is left behind.


def _good(tmp_path, family="llada", shards=2):
  cfg = fx.llada_hf_config() if family == "llada" else fx.dream_hf_config()
  tensors = fx.random_tensors(cfg)
  return cfg, tensors


def _convert_fails(tmp_path, match):
  with pytest.raises((CheckpointError, ValueError), match=match):
    checkpoint.convert_hf(tmp_path / "hf", tmp_path / "out")
  leftovers = [p.name for p in tmp_path.iterdir() if p.name != "hf"]
  assert leftovers == [], f"conversion left {leftovers} behind"


def test_missing_tensor(tmp_path):
  cfg, tensors = _good(tmp_path)
  del tensors["model.transformer.blocks.1.up_proj.weight"]
  fx.write_checkpoint(tmp_path / "hf", cfg, tensors)
  _convert_fails(tmp_path, r"missing tensors: model\.transformer\.blocks\.1\.up_proj\.weight")


def test_extra_tensor(tmp_path):
  cfg, tensors = _good(tmp_path, "dream")
  tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.ones(8, np.float32)
  fx.write_checkpoint(tmp_path / "hf", cfg, tensors)
  _convert_fails(tmp_path, r"unexpected tensors: model\.layers\.0\.self_attn\.rotary_emb")


def test_wrong_shape(tmp_path):
  cfg, tensors = _good(tmp_path)
  tensors["model.transformer.blocks.0.k_proj.weight"] = np.ones((64, 32), np.float32)
  fx.write_checkpoint(tmp_path / "hf", cfg, tensors, num_shards=2)
  _convert_fails(tmp_path, r"blocks\.0\.k_proj\.weight: shape \[64, 32\], expected \[64, 64\]")


def test_wrong_dtype(tmp_path):
  cfg, tensors = _good(tmp_path, "dream")
  tensors["model.norm.weight"] = np.ones(64, np.int32)
  fx.write_checkpoint(tmp_path / "hf", cfg, tensors)
  _convert_fails(tmp_path, r"model\.norm\.weight: dtype I32, expected a floating dtype")


def test_mixed_dtypes_need_an_explicit_param_dtype(tmp_path):
  cfg, tensors = _good(tmp_path)
  tensors["model.transformer.ln_f.weight"] = tensors["model.transformer.ln_f.weight"].astype(
      ml_dtypes.bfloat16)
  fx.write_checkpoint(tmp_path / "hf", cfg, tensors)
  _convert_fails(tmp_path, r"mix dtypes \['BF16', 'F32'\]")
  config = checkpoint.convert_hf(tmp_path / "hf", tmp_path / "ok", param_dtype="float32")
  assert config.param_dtype == "float32"


def test_truncated_shard(tmp_path):
  cfg, tensors = _good(tmp_path)
  fx.write_checkpoint(tmp_path / "hf", cfg, tensors, num_shards=2)
  shard = tmp_path / "hf" / "model-00002-of-00002.safetensors"
  shard.write_bytes(shard.read_bytes()[:-1000])
  _convert_fails(tmp_path, r"model-00002-of-00002\.safetensors: not a readable safetensors")


def test_corrupt_header(tmp_path):
  cfg, tensors = _good(tmp_path)
  fx.write_checkpoint(tmp_path / "hf", cfg, tensors)
  (tmp_path / "hf" / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
  _convert_fails(tmp_path, r"model\.safetensors: not a readable safetensors")


def test_shard_listed_in_index_is_missing(tmp_path):
  cfg, tensors = _good(tmp_path)
  fx.write_checkpoint(tmp_path / "hf", cfg, tensors, num_shards=3)
  (tmp_path / "hf" / "model-00003-of-00003.safetensors").unlink()
  _convert_fails(tmp_path, r"model-00003-of-00003\.safetensors: listed in .* but missing")


def test_unknown_model_type(tmp_path):
  cfg, tensors = _good(tmp_path)
  cfg["model_type"] = "gpt2"
  fx.write_checkpoint(tmp_path / "hf", cfg, tensors)
  _convert_fails(tmp_path, r"config\.json: unknown model_type 'gpt2'")


def test_unsupported_architecture_flag(tmp_path):
  cfg, tensors = _good(tmp_path)
  cfg["attention_layer_norm"] = True
  fx.write_checkpoint(tmp_path / "hf", cfg, tensors)
  _convert_fails(tmp_path, r"attention_layer_norm=True is not supported")


def test_existing_output_is_not_overwritten(tmp_path):
  cfg, tensors = _good(tmp_path)
  fx.write_checkpoint(tmp_path / "hf", cfg, tensors)
  (tmp_path / "out").mkdir()
  (tmp_path / "out" / "keep.txt").write_text("mine")
  with pytest.raises(FileExistsError):
    checkpoint.convert_hf(tmp_path / "hf", tmp_path / "out")
  assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_failure_while_writing_leaves_nothing(tmp_path, monkeypatch):
  """An error after writing began (here: a tensor read fails) removes the partial output."""
  cfg, tensors = _good(tmp_path)
  fx.write_checkpoint(tmp_path / "hf", cfg, tensors, num_shards=2)
  calls = {"n": 0}
  real_read = safetensors_io.read_tensor

  def flaky_read(key, info, **kwargs):
    calls["n"] += 1
    if calls["n"] == 10:
      raise CheckpointError(f"{info.file}: cannot read tensor {key!r} (disk error)")
    return real_read(key, info, **kwargs)

  monkeypatch.setattr(checkpoint, "read_tensor", flaky_read)
  with pytest.raises(CheckpointError, match="disk error"):
    checkpoint.convert_hf(tmp_path / "hf", tmp_path / "out", buffer_bytes=1000)
  assert calls["n"] == 10
  assert [p.name for p in tmp_path.iterdir()] == ["hf"]


def _params_files(ckpt):
  return sorted(p for p in (ckpt / checkpoint.PARAMS_DIR).rglob("*") if p.is_file())


def _biggest_params_file(ckpt):
  return max(_params_files(ckpt), key=lambda p: p.stat().st_size)


def _converted(tmp_path):
  cfg = fx.llada_hf_config()
  fx.write_checkpoint(tmp_path / "hf", cfg, fx.random_tensors(cfg, seed=3))
  checkpoint.convert_hf(tmp_path / "hf", tmp_path / "jax")
  return tmp_path / "jax"


def test_flipped_bytes_are_reported_as_corruption(tmp_path):
  ckpt = _converted(tmp_path)
  checkpoint.load(ckpt)  # intact: loads
  victim = _biggest_params_file(ckpt)
  data = bytearray(victim.read_bytes())
  for i in range(64):  # 64 flipped bytes spread over the file
    data[(i * 7919 + len(data) // 3) % len(data)] ^= 0xFF
  victim.write_bytes(bytes(data))
  with pytest.raises(CheckpointError,
                     match=r"^checkpoint corrupt: 1 file\(s\) differ .*re-convert"):
    checkpoint.load(ckpt)


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_truncated_or_missing_files_give_one_line(tmp_path, damage):
  ckpt = _converted(tmp_path)
  victim = _biggest_params_file(ckpt)
  if damage == "truncate":
    victim.write_bytes(victim.read_bytes()[:len(victim.read_bytes()) // 2])
  else:
    victim.unlink()
  for verify in (True, False):  # unchecked, Orbax's failure becomes the same line
    with pytest.raises(CheckpointError) as info:
      checkpoint.load(ckpt, verify_checksums=verify)
    message = str(info.value)
    assert message.startswith("checkpoint corrupt:") and "re-convert" in message, message
    assert "\n" not in message and len(message) < 400, message


def test_fingerprint_identifies_the_weights(tmp_path):
  ckpt = _converted(tmp_path)
  before = checkpoint.fingerprint(ckpt)
  # The same weights converted again, or saved from memory, keep it (Orbax's file names and
  # metadata differ between writes).
  checkpoint.convert_hf(tmp_path / "hf", tmp_path / "again")
  params, config = checkpoint.load(ckpt)
  checkpoint.save(tmp_path / "saved", params, config)
  assert checkpoint.fingerprint(tmp_path / "again") == before
  assert checkpoint.fingerprint(tmp_path / "saved") == before
  cfg = fx.llada_hf_config()
  fx.write_checkpoint(tmp_path / "hf2", cfg, fx.random_tensors(cfg, seed=4))
  checkpoint.convert_hf(tmp_path / "hf2", ckpt, overwrite=True)  # other weights, same path
  assert checkpoint.fingerprint(ckpt) != before


def test_a_killed_converters_temp_directory_is_removed_next_time(tmp_path):
  cfg = fx.llada_hf_config()
  fx.write_checkpoint(tmp_path / "hf", cfg, fx.random_tensors(cfg))
  dead_pid = 2**22 + 17  # above pid_max's default: no such process
  stale = tmp_path / f".jax.tmp-{dead_pid}-abcdef12"
  (stale / "params").mkdir(parents=True)
  checkpoint.convert_hf(tmp_path / "hf", tmp_path / "jax")
  assert not stale.exists()
  assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "jax"]


def test_relative_paths_work(tmp_path, monkeypatch):
  cfg = fx.llada_hf_config()
  fx.write_checkpoint(tmp_path / "hf", cfg, fx.random_tensors(cfg))
  monkeypatch.chdir(tmp_path)
  checkpoint.convert_hf("hf", "rel/jax")
  params, _ = checkpoint.load("rel/jax")
  assert jax.tree.leaves(params)


def test_the_converter_command_is_quiet_and_its_errors_are_one_line(tmp_path):
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  from tests.conftest import REPO_ROOT  # pylint: disable=import-outside-toplevel
  cfg = fx.llada_hf_config()
  fx.write_checkpoint(tmp_path / "hf", cfg, fx.random_tensors(cfg))
  command = [sys.executable, "-m", "checkpoints_convert.convert_hf", f"--hf_dir={tmp_path / 'hf'}",
             f"--out_dir={tmp_path / 'jax'}"]
  first = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                         check=False)
  assert first.returncode == 0, first.stderr[-2000:]
  assert first.stderr.strip() == "", first.stderr[-2000:]  # no Orbax INFO lines (no terminal)
  assert first.stdout.startswith(f"wrote {tmp_path / 'jax'} (llada,")
  again = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                         check=False)
  assert again.returncode != 0 and "Traceback" not in again.stderr
  assert again.stderr.strip().splitlines() == [
      f"error: {tmp_path / 'jax'} already exists (pass --overwrite / overwrite=True to replace it)"]


def _converted_with_tokenizer(tmp_path):
  cfg = fx.llada_hf_config()
  fx.write_checkpoint(tmp_path / "hf", cfg, fx.random_tensors(cfg, seed=3))
  (tmp_path / "hf" / "tokenizer_config.json").write_text('{"chat_template": "{{ x }}"}')
  (tmp_path / "hf" / "tokenizer.json").write_text("{}")
  checkpoint.convert_hf(tmp_path / "hf", tmp_path / "jax")
  return tmp_path / "jax"


def _one_line_error(function, kind=CheckpointError):
  with pytest.raises(kind) as info:
    function()
  message = str(info.value)
  assert "\n" not in message and len(message) < 500, message
  return message


@pytest.mark.parametrize("edit", ["rope_theta", "norm_eps", "tokenizer", "chat_template",
                                  "extra_tokenizer_file"])
def test_config_and_tokenizer_files_are_checked_too(tmp_path, edit):
  ckpt = _converted_with_tokenizer(tmp_path)
  checkpoint.load(ckpt)  # intact: loads
  config_path = ckpt / "config.json"
  if edit in ("rope_theta", "norm_eps"):  # runs, with other outputs, when nothing checks it
    fields = json.loads(config_path.read_text())
    fields[edit] *= 2
    config_path.write_text(json.dumps(fields))
    expect = "config.json"
  elif edit == "tokenizer":
    (ckpt / "tokenizer" / "tokenizer.json").write_text('{"model": {}}')
    expect = "tokenizer/tokenizer.json"
  elif edit == "chat_template":
    (ckpt / "tokenizer" / "tokenizer_config.json").write_text('{"chat_template": "{{ y }}"}')
    expect = "tokenizer/tokenizer_config.json"
  else:  # a chat template dropped in beside the others would take over
    (ckpt / "tokenizer" / "chat_template.jinja").write_text("{{ z }}")
    expect = "not in checksums.json (tokenizer/chat_template.jinja"
  message = _one_line_error(lambda: checkpoint.load(ckpt))
  assert message.startswith("checkpoint corrupt:") and expect in message, message
  checkpoint.load(ckpt, verify_checksums=False)  # the user may choose not to check


def test_a_checkpoint_without_checksums_is_refused_unless_unchecked(tmp_path):
  ckpt = _converted_with_tokenizer(tmp_path)
  (ckpt / checkpoint.CHECKSUMS_FILE).unlink()
  message = _one_line_error(lambda: checkpoint.load(ckpt))
  assert "has no checksums.json" in message and "--noverify_checkpoint" in message, message
  assert "checkpoints_convert.update_checksums" in message
  params, _ = checkpoint.load(ckpt, verify_checksums=False)
  checkpoint.update_checksums(ckpt)  # the user trusts the files: checked from now on
  checkpoint.load(ckpt)
  want = checkpoint._params_digests(params)  # pylint: disable=protected-access
  assert json.loads((ckpt / "checksums.json").read_text())["weights"] == (
      checkpoint._weights_digest(want))  # pylint: disable=protected-access


def test_checksums_of_an_older_version_are_updated_only_over_intact_weights(tmp_path):
  ckpt = _converted_with_tokenizer(tmp_path)
  before = checkpoint.fingerprint(ckpt)
  path = ckpt / checkpoint.CHECKSUMS_FILE
  record = json.loads(path.read_text())
  record["files"] = {k: v for k, v in record["files"].items() if k.startswith("params/")}
  path.write_text(json.dumps(record))  # what dllm_jax wrote before it covered config.json
  message = _one_line_error(lambda: checkpoint.load(ckpt))
  assert "does not cover config.json" in message and "update_checksums" in message, message
  victim = _biggest_params_file(ckpt)
  intact = victim.read_bytes()
  victim.write_bytes(intact[:-1] + bytes([intact[-1] ^ 1]))
  message = _one_line_error(lambda: checkpoint.update_checksums(ckpt))
  assert "params/ file(s) differ" in message, message
  victim.write_bytes(intact)
  checkpoint.update_checksums(ckpt)
  checkpoint.load(ckpt)
  assert checkpoint.fingerprint(ckpt) == before


@pytest.mark.parametrize("name", ["countdown_tiny", "lagged_difference_tiny"])
def test_the_built_in_models_ship_full_checksums(name):
  from dllm_jax.tasks import builtin  # pylint: disable=import-outside-toplevel
  directory = builtin.ASSETS / name
  checkpoint.verify(directory)
  assert "config.json" in json.loads((directory / "checksums.json").read_text())["files"]


@pytest.mark.parametrize("victim", ["config.json", "checksums.json"])
@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe\x00binary", b"[1, 2]"])
def test_config_or_checksums_that_are_not_json_give_one_line(tmp_path, victim, content):
  ckpt = _converted(tmp_path)
  (ckpt / victim).write_bytes(content)
  message = _one_line_error(lambda: checkpoint.load(ckpt))
  assert message.startswith("checkpoint corrupt:") and victim in message, message
  if victim == "config.json":  # unchecked too
    message = _one_line_error(lambda: checkpoint.load(ckpt, verify_checksums=False))
    assert victim in message and "re-convert" in message, message


def test_a_corrupt_tokenizer_file_gives_one_line(tmp_path):
  from dllm_jax.data import tokenize  # pylint: disable=import-outside-toplevel
  (tmp_path / "tokenizer.json").write_bytes(b'{"version": "1.0", "model": {"type": "BPE", ')
  message = _one_line_error(lambda: tokenize.CheckpointTokenizer.from_checkpoint(tmp_path),
                            ValueError)
  assert str(tmp_path / "tokenizer.json") in message and "restore it" in message, message


def test_export_carries_the_tokenizer_files_and_refuses_an_existing_folder(tmp_path):
  ckpt = _converted_with_tokenizer(tmp_path)
  checkpoint.export_hf(ckpt, tmp_path / "back")
  for name in ("tokenizer.json", "tokenizer_config.json"):
    assert (tmp_path / "back" / name).read_bytes() == (tmp_path / "hf" / name).read_bytes()
  message = _one_line_error(lambda: checkpoint.export_hf(ckpt, tmp_path / "back"),
                            FileExistsError)
  assert "already exists (pass --overwrite" in message, message
  # The export converts back to the same checkpoint, tokenizer files included.
  checkpoint.convert_hf(tmp_path / "back", tmp_path / "again")
  assert checkpoint.fingerprint(tmp_path / "again") == checkpoint.fingerprint(ckpt)
  assert sorted(p.name for p in (tmp_path / "again" / "tokenizer").iterdir()) == [
      "tokenizer.json", "tokenizer_config.json"]
