"""Stage-1 encoders: prompt construction, offline tokenizers/backbones (tiny BERT, MiniLM, tiny RoBERTa
from a local directory), pooling, and the audio/video/feature encoders' shapes."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from core.config import ConfigError, default_config
from model.encoders import (PromptBuilder, TextBackbone, TextEncoder, build_audio_encoder, build_text_encoder,
                            build_tiny_tokenizer, build_video_encoder, FeatureEncoder, load_text_backbone,
                            normalise_waveform, pad_batch, speaker_token, stack_waveforms, tiny_data2vec_audio_config,
                            tiny_timesformer_config, wordpiece_vocab)

TEXTS = ["I am so happy today", "that is awful news", "okay, fine. whatever you say", "we went to the house"]


def stage1(**overrides):
    base = {"stage1.width": 32, "stage1.tiny_hidden": 32, "stage1.tiny_layers": 1, "stage1.max_tokens": 64}
    base.update(overrides)
    return default_config().replace(base).stage1


def tokens_of(tokenizer, ids):
    return tokenizer.convert_ids_to_tokens(ids)


# ---- tokenizers and prompts -------------------------------------------------------------------

def test_tiny_vocab_spells_unseen_words_instead_of_unk():
    vocab = wordpiece_vocab(TEXTS)
    assert list(vocab)[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert {"happy", "now", "feels", "##a"} <= set(vocab)
    tok = build_tiny_tokenizer(TEXTS)
    pieces = tok.tokenize("Happy hat")
    assert pieces[0] == "happy" and "[UNK]" not in pieces and len(pieces) > 2


def test_prompt_has_context_speakers_and_the_mask_last():
    model, tok = load_text_backbone("tiny", TEXTS, max_speakers=3, max_tokens=64, tiny_hidden=32, tiny_layers=1)
    builder = PromptBuilder(tok, max_tokens=64)
    prompts = builder.dialogue(TEXTS[:3], [0, 1, 0])
    assert len(prompts) == 3
    last = tokens_of(tok, prompts[2])
    assert last[0] == "[CLS]" and last[-1] == "[MASK]"
    assert last[-5:] == ["[SEP]", "now", "<s0>", "feels", "[MASK]"]
    # the whole dialogue so far, each utterance after its speaker token, in order
    s0, s1 = last.index("<s0>"), last.index("<s1>")
    assert s0 < s1 and last[s0 + 1] == "i" and last[s1 + 1] == "that"
    assert tokens_of(tok, prompts[0])[:3] == ["[CLS]", "<s0>", "i"]
    assert tokens_of(tok, prompts[1])[-3] == "<s1>"           # "... Now <s1> feels [MASK]"
    # speaker tokens are single ids, added to the tokenizer and to the embedding table
    assert len(tok.tokenize("<s2>")) == 1
    assert model.get_input_embeddings().num_embeddings == len(tok)


def test_target_segment_marks_the_utterance_being_classified_and_the_suffix():
    """stage1.target_segment: segment id 1 from the target turn's speaker token to the mask, 0 before; the
    encoder's output changes with it (the ids reach the model); refused where the model has one segment type."""
    from model.encoders import target_segment

    encoder = build_text_encoder(stage1(**{"stage1.target_segment": True}), TEXTS, num_classes=3, max_speakers=3).eval()
    ids = encoder.inputs([(TEXTS[:3], [0, 1, 0])])
    batch, mask = encoder.collate(ids)                                        # left-padded
    segments = target_segment(batch, encoder.backbone.speaker_ids)
    last = tokens_of(encoder.tokenizer, ids[2])
    marked = [t for t, seg in zip(last, segments[2, -len(last):].tolist()) if seg]
    assert marked == ["<s0>"] + encoder.tokenizer.tokenize(TEXTS[2]) + ["[SEP]", "now", "<s0>", "feels", "[MASK]"]
    assert "that" in last and "that" not in marked                            # the context stays segment 0
    first = tokens_of(encoder.tokenizer, ids[0])                              # no context: all of it is the target
    assert segments[0, -len(first):].tolist()[1:] == [1] * (len(first) - 1)
    plain = TextEncoder(encoder.backbone.model, encoder.tokenizer, 3, 32, prompt=True, max_tokens=64).eval()
    plain.head.load_state_dict(encoder.head.state_dict())
    with torch.no_grad():
        assert not torch.allclose(encoder(batch, mask)[0][2], plain(batch, mask)[0][2])
    assert plain.backbone.speaker_ids.numel() == 0                           # off by default: no segment ids

    from transformers import RobertaConfig, RobertaModel
    one_type = RobertaModel(RobertaConfig(vocab_size=len(encoder.tokenizer), hidden_size=32, num_hidden_layers=1,
                                          num_attention_heads=4, intermediate_size=64, type_vocab_size=1))
    with pytest.raises(ConfigError, match="stage1.target_segment"):
        TextEncoder(one_type, encoder.tokenizer, 3, 32, prompt=True, max_tokens=64, target_segment=True, max_speakers=3)
    unprompted = build_text_encoder(stage1(**{"stage1.target_segment": True, "stage1.prompt": False}), TEXTS, 3, 3)
    assert unprompted.backbone.speaker_ids.numel() == 0                      # no prompt, no context to tell apart


def test_left_truncation_keeps_the_most_recent_context():
    _, tok = load_text_backbone("tiny", TEXTS, 3, 64, 32, 1)
    builder = PromptBuilder(tok, max_tokens=12)
    prompts = builder.dialogue(TEXTS, [0, 1, 2, 0])
    for p in prompts:
        assert len(p) <= 12 and p[-1] == tok.mask_token_id
    last = tokens_of(tok, prompts[-1])
    assert len(last) == 12 and last[0] == "[CLS]"
    # 12 = [CLS] + 6 context tokens + 5 suffix tokens: the context is the end of the dialogue
    assert last[1:7] == ["<s0>", "we", "went", "to", "the", "house"]
    assert "happy" not in last and "awful" not in last


def test_left_padding_puts_the_mask_last_and_does_not_change_the_vector():
    encoder = build_text_encoder(stage1(), TEXTS, num_classes=3, max_speakers=3)
    encoder.eval()
    ids = encoder.inputs([(TEXTS, [0, 1, 2, 0])])
    batch, mask = encoder.collate([ids[0], ids[3]])
    assert int(mask[0].sum()) == len(ids[0]) and bool((mask[:, -1] == 1).all())
    assert bool((batch[:, -1] == encoder.tokenizer.mask_token_id).all())
    assert int(mask[0, 0]) == 0 and int(batch[0, 0]) == encoder.tokenizer.pad_token_id   # padded on the left
    with torch.no_grad():
        together, _ = encoder(batch, mask)
        alone, _ = encoder(*encoder.collate([ids[0]]))
    # BERT numbers positions from 0 regardless of padding: the encoder passes explicit position ids.
    torch.testing.assert_close(together[0], alone[0], atol=1e-5, rtol=1e-4)
    assert together.shape == (2, 32)


def test_prompt_off_is_the_utterance_alone_with_first_token_pooling():
    encoder = build_text_encoder(stage1(**{"stage1.prompt": False}), TEXTS, num_classes=3, max_speakers=3)
    encoder.eval()
    assert encoder.backbone.pool == "first"
    ids = encoder.inputs([(TEXTS[:2], [0, 1])])
    assert tokens_of(encoder.tokenizer, ids[1]) == ["[CLS]", "that", "is", "awful", "news", "[SEP]"]
    batch, mask = encoder.collate(ids)
    assert int(mask[1, 0]) == 1 and int(mask[1, -1]) == 0                 # right padding
    with torch.no_grad():
        pooled = encoder.backbone(batch, mask)
        hidden = encoder.backbone.model(input_ids=batch, attention_mask=mask).last_hidden_state
        vec, logits = encoder(batch, mask)
    torch.testing.assert_close(pooled, hidden[:, 0])
    assert vec.shape == (2, 32) and logits.shape == (2, 3)


def test_minilm_loads_offline_with_bert_style_prompt():
    model, tok = load_text_backbone("minilm", TEXTS, max_speakers=4, max_tokens=128)
    assert tok.mask_token == "[MASK]" and tok.sep_token == "[SEP]"
    assert model.get_input_embeddings().num_embeddings >= len(tok)
    assert tokens_of(tok, tok("<s3> hello", add_special_tokens=False)["input_ids"])[0] == "<s3>"
    encoder = TextEncoder(model, tok, num_classes=3, width=32, prompt=True, max_tokens=128).eval()
    ids = encoder.inputs([(TEXTS[:2], [0, 1])])
    assert tokens_of(tok, ids[1])[-5:] == ["[SEP]", "now", "<s1>", "feels", "[MASK]"]
    with torch.no_grad():
        vec, logits = encoder(*encoder.collate(ids))
    assert vec.shape == (2, 32) and logits.shape == (2, 3) and bool(torch.isfinite(vec).all())


def save_tiny_roberta(directory) -> None:
    """A real tiny RoBERTa checkpoint: byte-level BPE with one token per byte (no merges)."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import RobertaConfig, RobertaModel, RobertaTokenizer

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    vocab = {t: i for i, t in enumerate(specials + sorted(ByteLevel.alphabet()))}
    tok = RobertaTokenizer(vocab=vocab, merges=[])
    config = RobertaConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                           intermediate_size=64, max_position_embeddings=140, pad_token_id=tok.pad_token_id,
                           bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    RobertaModel(config, add_pooling_layer=False).save_pretrained(directory)
    tok.save_pretrained(directory)


def test_local_roberta_checkpoint_takes_its_mask_and_sep_from_the_tokenizer(tmp_path):
    save_tiny_roberta(tmp_path)
    encoder = build_text_encoder(stage1(**{"stage1.text_encoder": str(tmp_path), "stage1.max_tokens": 100}),
                                 TEXTS, num_classes=3, max_speakers=3)
    encoder.eval()
    tok = encoder.tokenizer
    assert type(encoder.backbone.model).__name__ == "RobertaModel"
    assert tok.mask_token == "<mask>" and tok.sep_token == "</s>"
    ids = encoder.inputs([(TEXTS[:2], [0, 1])])
    assert ids[1][0] == tok.cls_token_id and ids[1][-1] == tok.mask_token_id
    suffix = encoder.prompts.suffix(1)
    assert suffix[0] == tok.sep_token_id and speaker_token(1) in tokens_of(tok, suffix)
    assert all(len(p) <= 100 for p in ids)
    # RoBERTa numbers positions past the padding itself: left padding leaves the vector unchanged.
    assert not encoder.backbone.explicit_positions
    with torch.no_grad():
        together, logits = encoder(*encoder.collate(ids))
        alone, _ = encoder(*encoder.collate([ids[0]]))
    torch.testing.assert_close(together[0], alone[0], atol=1e-5, rtol=1e-4)
    assert together.shape == (2, 32) and logits.shape == (2, 3)


def test_unknown_text_encoder_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="stage1.text_encoder"):
        build_text_encoder(stage1(**{"stage1.text_encoder": str(tmp_path / "nope")}), TEXTS, 3, 3)
    with pytest.raises(ConfigError, match="stage1.audio_encoder"):
        build_audio_encoder(stage1(**{"stage1.audio_encoder": str(tmp_path / "nope")}), 3)


def test_pad_batch_left_and_right():
    ids, mask = pad_batch([[1, 2, 3], [4]], pad_id=0, left=True)
    assert ids.tolist() == [[1, 2, 3], [0, 0, 4]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    ids, mask = pad_batch([[1, 2, 3], [4]], pad_id=0, left=False)
    assert ids.tolist() == [[1, 2, 3], [4, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]


# ---- audio, video, vectors --------------------------------------------------------------------

def test_audio_encoder_first_position_and_projection_rule():
    same = build_audio_encoder(stage1(**{"stage1.width": 32, "stage1.tiny_hidden": 32}), num_classes=4)
    wide = build_audio_encoder(stage1(**{"stage1.width": 48}), num_classes=4)
    assert isinstance(same.head.projection, nn.Identity) and isinstance(wide.head.projection, nn.Linear)
    waves, mask = stack_waveforms([normalise_waveform(np.random.rand(4000)), normalise_waveform(np.random.rand(3000))])
    assert waves.shape == (2, 4000) and mask.tolist()[1][2999:3001] == [1, 0]
    same.eval()
    with torch.no_grad():
        vec, logits = same(waves, mask)
        hidden = same.model(waves, attention_mask=mask).last_hidden_state
    assert vec.shape == (2, 32) and logits.shape == (2, 4)
    torch.testing.assert_close(vec, hidden[:, 0])          # the authors' audio vector: no projection
    assert float(normalise_waveform(np.arange(10.0)).mean().abs()) < 1e-6


def test_video_encoder_fits_clips_and_takes_the_cls_position():
    enc = build_video_encoder(stage1(**{"stage1.width": 32}), num_classes=3, frames=4, size=16, channels=3)
    assert enc.model.config.num_frames == 4 and enc.model.config.patch_size == 8
    assert isinstance(enc.head.projection, nn.Identity)
    grey_long_big = torch.rand(7, 1, 24, 24)
    clip = enc.fit_clip(grey_long_big)
    assert clip.shape == (4, 3, 16, 16) and float(clip.min()) >= -1.0 and float(clip.max()) <= 1.0
    enc.eval()
    batch = torch.stack([clip, enc.fit_clip(torch.rand(4, 3, 16, 16))])
    with torch.no_grad():
        vec, logits = enc(batch)
        cls = enc.model(pixel_values=batch).last_hidden_state[:, 0]
    assert vec.shape == (2, 32) and logits.shape == (2, 3)
    torch.testing.assert_close(vec, cls)


def test_audio_and_video_checkpoints_load_from_local_directories(tmp_path):
    from transformers import Data2VecAudioModel, TimesformerModel

    Data2VecAudioModel(tiny_data2vec_audio_config(32, 1)).save_pretrained(tmp_path / "audio")
    TimesformerModel(tiny_timesformer_config(32, 1, frames=2, size=16)).save_pretrained(tmp_path / "video")
    s1 = stage1(**{"stage1.audio_encoder": str(tmp_path / "audio"), "stage1.video_encoder": str(tmp_path / "video"),
                   "stage1.width": 48})
    audio = build_audio_encoder(s1, 3).eval()
    assert audio.sample_rate == 16000 and isinstance(audio.head.projection, nn.Linear)
    wave = normalise_waveform(np.random.rand(4000), rate=8000, target_rate=audio.sample_rate)   # 0.5 s at 8 kHz
    assert wave.shape == (8000,)
    # the checkpoint fixes frames and size; clips of another shape are fitted to it
    video = build_video_encoder(s1, 3, frames=5, size=20, channels=1).eval()
    clip = video.fit_clip(torch.rand(5, 1, 20, 20))
    assert clip.shape == (2, 3, 16, 16)
    with torch.no_grad():
        assert audio(wave[None])[0].shape == (1, 48)
        assert video(clip[None])[1].shape == (1, 3)


def test_feature_encoder_is_an_mlp_to_the_width():
    enc = FeatureEncoder(in_dim=10, num_classes=3, width=24)
    kinds = [type(m).__name__ for m in enc.head.projection]
    assert kinds == ["Linear", "GELU", "Dropout", "Linear"]
    vec, logits = enc(torch.randn(5, 10))
    assert vec.shape == (5, 24) and logits.shape == (5, 3)


def test_text_backbone_rejects_unknown_pooling():
    model, _ = load_text_backbone("tiny", TEXTS, 2, 32, 32, 1)
    with pytest.raises(ValueError):
        TextBackbone(model, "max")


def test_mean_pooling_averages_real_tokens_only():
    from model.encoders import TextBackbone

    class Echo(torch.nn.Module):  # a stand-in language model whose hidden states are its input ids
        config = type("C", (), {"hidden_size": 1})()

        def forward(self, input_ids, attention_mask):
            return type("O", (), {"last_hidden_state": input_ids.float().unsqueeze(-1)})()

    ids = torch.tensor([[2, 4, 0], [3, 0, 0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    pooled = TextBackbone(Echo(), "mean")(ids, mask)
    assert pooled.squeeze(-1).tolist() == [3.0, 3.0]
