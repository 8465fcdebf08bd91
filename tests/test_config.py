"""The one config object: overrides, refusals with key paths, flat params and stable hashes."""
import pytest

from core.config import ConfigError, load_config, parse_value, valid_keys


def test_defaults_follow_the_authors_meld_settings():
    cfg = load_config()
    assert (cfg.fusion.width, cfg.fusion.heads, cfg.fusion.dropout) == (768, 8, 0.5)
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.train.lr, cfg.train.weight_decay) == (30, 16, 1e-4, 1e-6)
    assert (cfg.fusion.kd_audio_weight, cfg.fusion.kd_video_weight) == (0.01, 0.08)
    assert (cfg.stage1.kd_logit_weight, cfg.stage1.kd_feature_weight, cfg.stage1.kd_temperature) == (0.1, 1.0, 2.0)
    assert cfg.fusion.shared_anchor_layers and cfg.fusion.anchor_gating and cfg.train.select_on == "dev"


def test_dotted_overrides_are_typed_through_yaml_rules():
    cfg = load_config(None, ["fusion.anchor_gating=false", "train.lr=3e-4", "fusion.modalities=audio,text", "seed=3"])
    assert cfg.fusion.anchor_gating is False
    assert cfg.train.lr == pytest.approx(3e-4)
    assert cfg.fusion.modalities == ["text", "audio"]  # canonical order
    assert cfg.seed == 3
    assert parse_value("1e-5") == pytest.approx(1e-5) and parse_value("8") == 8 and parse_value("abc") == "abc"


def test_unknown_key_lists_valid_keys_and_suggests_the_closest():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["fusion.anchor_gatin=false"])
    msg = str(err.value)
    assert "fusion.anchor_gatin" in msg and "Did you mean 'fusion.anchor_gating'" in msg and "fusion.width" in msg


@pytest.mark.parametrize("override, key", [
    ("train.lr=fast", "train.lr"),                 # wrong type
    ("fusion.anchor_gating=3", "fusion.anchor_gating"),
    ("fusion.dropout=1.0", "fusion.dropout"),      # out of range
    ("fusion.heads=5", "fusion.heads"),            # heads must divide width
    ("fusion.modalities=", "fusion.modalities"),   # at least one modality
    ("fusion.modalities=text,smell", "fusion.modalities"),
    ("train.select_on=train", "train.select_on"),
    ("data.name=meld", "data.path"),               # a real dataset needs a path
])
def test_bad_values_are_refused_with_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])


def test_yaml_file_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "cfg.yaml"
    bad.write_text("fusion:\n  width: 128\n  heads: [4\n")
    with pytest.raises(ConfigError, match=r"cfg\.yaml: line \d+"):
        load_config(bad)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("fusion:\n  widht: 128\n")
    with pytest.raises(ConfigError, match=r"unknown\.yaml: unknown key 'fusion\.widht'.*fusion\.width"):
        load_config(unknown)


def test_flat_params_and_hashes():
    cfg = load_config()
    flat = cfg.flat()
    assert set(flat) == set(valid_keys())
    assert flat["fusion.modalities"] == "text,audio,video"
    # the hash is stable, ignores the device, and sees every other change
    assert cfg.content_hash() == load_config().content_hash()
    assert cfg.content_hash() == cfg.replace(["train.device=cpu"]).content_hash()
    assert cfg.content_hash() != cfg.replace(["fusion.anchor_gating=false"]).content_hash()
    # stage 1 is shared by every config whose stage-1 part and stage-1 seed match
    assert cfg.stage1_hash() == cfg.replace(["fusion.width=128", "fusion.heads=4"]).stage1_hash()
    assert cfg.stage1_hash() != cfg.replace(["stage1.prompt=false"]).stage1_hash()
    assert cfg.stage1_hash() != cfg.replace(["seed=1"]).stage1_hash()
    shared = cfg.replace(["stage1.shared_seed=0"])
    assert shared.stage1_hash() == shared.replace(["seed=5"]).stage1_hash()


def test_paths_become_absolute_and_missing_ones_are_refused(tmp_path):
    (tmp_path / "meld").mkdir()
    cfg = load_config(None, ["data.name=meld", "data.path=meld"]).with_absolute_paths(tmp_path)
    assert cfg.data.path == str((tmp_path / "meld").resolve())
    with pytest.raises(ConfigError, match=r"data\.path.*does not exist"):
        load_config(None, ["data.name=meld", "data.path=nope"]).with_absolute_paths(tmp_path)
    with pytest.raises(ConfigError, match=r"stage1\.text_encoder"):
        load_config(None, ["stage1.text_encoder=/no/such/checkpoint"]).with_absolute_paths(tmp_path)
    assert load_config().with_absolute_paths(tmp_path) == load_config()  # tiny/minilm are not paths
