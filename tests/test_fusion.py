"""The stage-2 model: every toggle changes what is built and computed, exactly as documented."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from core.config import load_config
from model.fusion import (AnchorGatedTransformer, AttentionPath, ConcatFusion, CheapDropout, Gate,
                          MultiHeadCrossAttention, PackedRows, build_fusion, count_parameters, keep_mask, softmax_last,
                          stage2_loss)
from model.distill import feature_similarity_loss, logit_relation_loss

W, C, S = 16, 5, 9           # width, classes, fusion.max_speakers
MODS = ("text", "audio", "video")


def fusion_cfg(*overrides):
    return load_config(None, [f"fusion.width={W}", "fusion.heads=4", "fusion.dropout=0.3", *overrides])


def build(*overrides, dims=None):
    cfg = fusion_cfg(*overrides)
    torch.manual_seed(0)
    return build_fusion(cfg.fusion, C, dims or {m: W for m in cfg.fusion.modalities}), cfg


def batch(b=3, t=6, dims=None, seed=1):
    g = torch.Generator().manual_seed(seed)
    dims = dims or {m: W for m in MODS}
    inputs = {m: torch.randn(b, t, d, generator=g) for m, d in dims.items()}
    speakers = torch.randint(0, 3, (b, t), generator=g)
    lengths = torch.tensor([t, t - 2, 1][:b])
    mask = torch.arange(t)[None, :] < lengths[:, None]
    return inputs, speakers, mask


# ---- parameter counts by formula ---------------------------------------------------------------

PATH = 4 * (W * W + W) + 2 * (W * W + W) + 2 * W      # q,k,v,out + FFN W1,W2 + FFN LayerNorm (layer 0: no query norm)
GATE = W * W + W
REDUCE = lambda n: n * W * W + W
HEAD = W * C + C
SPEAKERS = (S + 1) * W


def test_parameter_count_of_the_full_model_shared_and_separate():
    branches = 2 * (3 * (PATH + GATE) + REDUCE(3))
    shared, _ = build()
    assert count_parameters(shared) == branches + (PATH + GATE) + REDUCE(3) + 3 * HEAD + SPEAKERS
    separate, _ = build("fusion.shared_anchor_layers=false")
    assert count_parameters(separate) - count_parameters(shared) == 2 * (PATH + GATE)
    assert len(shared.anchor.paths) == 1 and len(separate.anchor.paths) == 3


def test_shared_anchor_layer_serves_all_three_anchor_paths():
    """One anchor path module: the padded oracle (and evaluation) calls it three times; packed training
    runs it once over the three paths' rows stacked (self path, then the audio and video branches)."""
    cfg = fusion_cfg()
    for packed, training, expected in ((False, True, [(3, 6, W)] * 3), (True, False, [(11, W)] * 3),
                                       (True, True, [(3 * 11, W)])):  # batch(): a 3 x 6 grid, 11 real
        torch.manual_seed(0)
        model = build_fusion(cfg.fusion, C, {m: W for m in MODS}, packed=packed)
        rows_seen = []
        model.anchor.paths[0].layers[0].register_forward_hook(lambda module, args, out: rows_seen.append(tuple(out.shape)))
        model.train(training)
        model(*batch())
        assert len(model.anchor.paths) == 1 and rows_seen == expected, (packed, rows_seen)


def test_anchor_gating_off_replaces_every_gate_with_identity():
    gated, _ = build()
    plain, _ = build("fusion.anchor_gating=false")
    n_gates = sum(isinstance(m, Gate) for m in gated.modules())
    assert n_gates == 7  # 3 + 3 in the branches, 1 shared in the anchor
    assert not any(isinstance(m, Gate) for m in plain.modules())
    assert count_parameters(gated) - count_parameters(plain) == n_gates * GATE
    assert all(isinstance(g, nn.Identity) for g in plain.anchor.gates)


def test_gate_formula():
    gate = Gate(W)
    x = torch.randn(4, W)
    assert torch.allclose(gate(x), torch.sigmoid(F.relu(gate.fc(x))) * x)


def test_speaker_embeddings_toggle():
    on, _ = build()
    off, _ = build("fusion.speaker_embeddings=false")
    assert count_parameters(on) - count_parameters(off) == SPEAKERS
    inputs, speakers, mask = batch()
    other = (speakers + 1) % 3
    on.eval(), off.eval()
    assert not torch.allclose(on(inputs, speakers, mask)["logits"]["anchor"], on(inputs, other, mask)["logits"]["anchor"])
    assert torch.equal(off(inputs, speakers, mask)["logits"]["anchor"], off(inputs, other, mask)["logits"]["anchor"])


@pytest.mark.parametrize("mods, anchor, heads, n_paths", [
    ("text,audio", "text", {"anchor", "audio"}, {"audio": 2, "anchor": 2}),
    ("text,video", "text", {"anchor", "video"}, {"video": 2, "anchor": 2}),
    ("audio,video", "audio", {"anchor", "video"}, {"video": 2, "anchor": 2}),
    ("text", "text", {"anchor"}, {"anchor": 1}),
    ("video", "video", {"anchor"}, {"anchor": 1}),
])
def test_modality_subsets_build_and_run_only_what_is_present(mods, anchor, heads, n_paths):
    model, cfg = build(f"fusion.modalities={mods}", "fusion.shared_anchor_layers=false")
    present = cfg.fusion.modalities
    assert model.anchor_modality == anchor
    assert set(model.heads) == heads
    blocks = {"anchor": model.anchor, **dict(model.branches)}
    assert {k: b.n_paths for k, b in blocks.items()} == n_paths
    n_blocks = len(blocks)
    paths = sum(b.n_paths for b in blocks.values())
    expected = paths * (PATH + GATE) + sum(REDUCE(b.n_paths) for b in blocks.values()) + len(heads) * HEAD + SPEAKERS
    assert count_parameters(model) == expected and n_blocks == len(heads)
    inputs, speakers, mask = batch(dims={m: W for m in present})  # absent modalities are not even passed
    out = model.eval()(inputs, speakers, mask)
    assert set(out["logits"]) == heads and out["prediction"] == "anchor"
    assert out["logits"]["anchor"].shape == (3, 6, C)


def test_concat_mode_is_a_plain_baseline():
    model, _ = build("fusion.mode=concat", dims={"text": 12, "audio": W, "video": 8})
    assert isinstance(model, ConcatFusion)
    assert not any(isinstance(m, (MultiHeadCrossAttention, Gate)) for m in model.modules())
    proj = (12 * W + W) + (8 * W + W)  # text and video projected, audio already at width
    assert count_parameters(model) == proj + REDUCE(3) + HEAD + SPEAKERS
    out = model.eval()(*batch(dims={"text": 12, "audio": W, "video": 8}))
    assert set(out["logits"]) == {"anchor"}


def test_input_projection_only_when_dims_differ():
    model, _ = build(dims={"text": 12, "audio": W, "video": W})
    assert isinstance(model.inputs.project["text"], nn.Linear)
    assert isinstance(model.inputs.project["audio"], nn.Identity)


def test_query_layernorm_only_from_the_second_layer():
    model, _ = build("fusion.layers=2")
    layers = model.anchor.paths[0].layers
    assert isinstance(layers[0].query_norm, nn.Identity) and isinstance(layers[1].query_norm, nn.LayerNorm)
    one, _ = build()
    assert count_parameters(model) - count_parameters(one) == 7 * (PATH + 2 * W)


def test_attention_init_and_scaling():
    attn = MultiHeadCrossAttention(W, 4, dropout=0.0)
    assert torch.count_nonzero(attn.qkv.bias) == 0
    weights = attn.qkv.weight.chunk(3)   # q, k, v: each a Xavier-uniform (W, W) block
    bound = (6 / (W + W)) ** 0.5
    assert all(0.5 * bound < w.abs().max() <= bound for w in weights)
    proj = {name: (lambda x, w=w, b=b: F.linear(x, w, b))
            for name, w, b in zip("qkv", weights, attn.qkv.bias.chunk(3))}
    q, kv = torch.randn(2, 3, W), torch.randn(2, 5, W)
    keys = torch.tensor([[True] * 5, [True, True, False, False, False]])
    # reference: per-head softmax(q k^T / sqrt(hd)) over real keys only
    hd = W // 4
    Q = proj["q"](q).view(2, 3, 4, hd).transpose(1, 2)
    K = proj["k"](kv).view(2, 5, 4, hd).transpose(1, 2)
    V = proj["v"](kv).view(2, 5, 4, hd).transpose(1, 2)
    scores = Q @ K.transpose(-1, -2) / hd ** 0.5
    scores = scores.masked_fill(~keys[:, None, None, :], float("-inf"))
    ref = attn.out((scores.softmax(-1) @ V).transpose(1, 2).reshape(2, 3, W))
    assert torch.allclose(attn(q, kv, keys), ref, atol=1e-6)


def test_cross_path_drops_out_its_streams_and_self_path_does_not():
    path = AttentionPath(W, 4, 1, dropout=0.5)
    for m in path.modules():  # keep only the path's own stream dropout live
        if isinstance(m, nn.Dropout) and m is not path.dropout:
            m.p = 0.0
    path.train()
    x, src, bias = torch.randn(2, 4, W), torch.randn(2, 4, W), torch.randn(2, 4, W)
    keys = torch.ones(2, 4, dtype=torch.bool)
    torch.manual_seed(0)
    assert torch.equal(path(x, None, keys, bias), path(x, None, keys, bias))
    torch.manual_seed(0)
    a = path(x, src, keys, bias)
    assert not torch.equal(a, path(x, src, keys, bias))


@pytest.mark.parametrize("mode", ["anchor", "concat"])
def test_padding_does_not_change_real_positions(mode):
    model, _ = build(f"fusion.mode={mode}")
    model.eval()
    inputs, speakers, mask = batch(b=2, t=4)
    mask[:] = torch.tensor([[True] * 4, [True, True, False, False]])
    out = model(inputs, speakers, mask)["logits"]
    # pad every dialogue by 5 more positions of junk (random vectors, random speakers)
    g = torch.Generator().manual_seed(9)
    padded = {m: torch.cat([x, 100 * torch.randn(2, 5, W, generator=g)], 1) for m, x in inputs.items()}
    sp = torch.cat([speakers, torch.randint(0, S, (2, 5), generator=g)], 1)
    pm = torch.cat([mask, torch.zeros(2, 5, dtype=torch.bool)], 1)
    # and scramble the already-padded tail of dialogue 1 too
    padded = {m: x.clone() for m, x in padded.items()}
    for x in padded.values():
        x[1, 2:4] = 50.0
    out2 = model(padded, sp, pm)["logits"]
    for head in out:
        assert torch.allclose(out[head][mask], out2[head][:, :4][mask], atol=1e-5), head


def test_absent_rows_are_not_attended_to():
    model, _ = build()
    model.eval()
    inputs, speakers, mask = batch()
    present = {m: mask.clone() for m in MODS}
    present["audio"][0, 1] = False
    out = model(inputs, speakers, mask, present)["logits"]
    junk = {m: x.clone() for m, x in inputs.items()}
    junk["audio"][0, 1] = 1e3
    out2 = model(junk, speakers, mask, present)["logits"]
    for head in out:
        assert torch.allclose(out[head], out2[head], atol=1e-5)
    # the mask matters: without it the junk row leaks into the anchor
    assert not torch.allclose(model(junk, speakers, mask)["logits"]["anchor"][mask], out["anchor"][mask], atol=1e-3)
    # and an absent row is not the same as a real all-zero clip: it is left out of the keys
    zeros = {m: x.clone() for m, x in inputs.items()}
    zeros["audio"][0, 1] = 0.0
    as_real_zero = model(zeros, speakers, mask)["logits"]["anchor"]
    assert not torch.allclose(as_real_zero[0, 0], out["anchor"][0, 0], atol=1e-4)


def _outputs(seed=0):
    torch.manual_seed(seed)
    b, t = 2, 5
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    logits = {h: torch.randn(b, t, C, requires_grad=True) for h in ("anchor", "audio", "video")}
    feats = {h: torch.randn(b, t, W, requires_grad=True) for h in ("anchor", "audio", "video")}
    labels = torch.randint(0, C, (b, t)).masked_fill(~mask, -100)
    return {"logits": logits, "features": feats, "prediction": "anchor"}, labels, mask


def test_stage2_loss_terms():
    out, y, mask = _outputs()
    z = {h: v[mask] for h, v in out["logits"].items()}
    f = {h: v[mask] for h, v in out["features"].items()}
    yy = y[mask]
    cfg = fusion_cfg("fusion.kd_audio_weight=0.3", "fusion.kd_video_weight=0.7")
    expected = (F.cross_entropy(z["anchor"], yy)
                + 0.3 * (F.cross_entropy(z["audio"], yy) + logit_relation_loss(z["audio"], z["anchor"], 2.0))
                + 0.7 * (F.cross_entropy(z["video"], yy) + logit_relation_loss(z["video"], z["anchor"], 2.0)))
    assert stage2_loss(cfg, out, y, mask).item() == pytest.approx(expected.item(), rel=1e-6)
    cfg = fusion_cfg("fusion.kd_audio_weight=0.3", "fusion.kd_video_weight=0.7", "fusion.kd_terms=feature")
    expected = (F.cross_entropy(z["anchor"], yy) + 0.3 * feature_similarity_loss(f["audio"], f["anchor"])
                + 0.7 * feature_similarity_loss(f["video"], f["anchor"]))
    assert stage2_loss(cfg, out, y, mask).item() == pytest.approx(expected.item(), rel=1e-6)
    cfg = fusion_cfg("fusion.kd_audio_weight=0", "fusion.kd_video_weight=0")
    assert stage2_loss(cfg, out, y, mask).item() == pytest.approx(F.cross_entropy(z["anchor"], yy).item(), rel=1e-6)


def test_padding_labels_never_enter_the_loss():
    out, y, mask = _outputs()
    cfg = fusion_cfg()
    y2 = y.clone()
    y2[~mask] = 3  # a valid class at padding: would change the loss if padding were read
    assert stage2_loss(cfg, out, y, mask).item() == stage2_loss(cfg, out, y2, mask).item()


def test_detach_anchor_stops_kd_gradient_into_the_anchor():
    grads = {}
    for detach in (False, True):
        out, y, mask = _outputs()
        cfg = fusion_cfg(f"fusion.detach_anchor={str(detach).lower()}", "fusion.kd_terms=logit")
        stage2_loss(cfg, out, y, mask).backward()
        grads[detach] = out["logits"]["anchor"].grad.clone()
    out, y, mask = _outputs()
    F.cross_entropy(out["logits"]["anchor"][mask], y[mask]).backward()
    assert torch.allclose(grads[True], out["logits"]["anchor"].grad)
    assert not torch.allclose(grads[False], out["logits"]["anchor"].grad)


def test_model_is_an_anchor_gated_transformer_with_authors_defaults():
    cfg = load_config()
    assert cfg.fusion.mode == "anchor"
    model = build_fusion(load_config(None, ["fusion.width=32", "fusion.heads=8"]).fusion, 7, {m: 32 for m in MODS})
    assert isinstance(model, AnchorGatedTransformer)
    assert model.branch_modalities == ["audio", "video"]


# ---- packed rows against the padded oracle -------------------------------------------------------

def _ragged_batch(dims):
    """4 dialogues of 7, 3, 1 and 5 utterances; a missing audio clip, a dialogue with no audio at all."""
    g = torch.Generator().manual_seed(3)
    b, t = 4, 7
    inputs = {m: torch.randn(b, t, d, generator=g) for m, d in dims.items()}
    speakers = torch.randint(0, 3, (b, t), generator=g)
    mask = torch.arange(t)[None, :] < torch.tensor([7, 3, 1, 5])[:, None]
    present = {m: mask.clone() for m in dims}
    present["audio"][0, 2] = False
    present["audio"][3] = False
    labels = torch.randint(0, C, (b, t), generator=g)
    return inputs, speakers, mask, present, labels


@pytest.mark.parametrize("overrides", [(), ("fusion.layers=2", "fusion.shared_anchor_layers=false")])
def test_packed_rows_match_the_padded_oracle_logits_loss_and_gradients(overrides):
    dims = {"text": 12, "audio": W, "video": W}
    cfg = fusion_cfg("fusion.dropout=0.0", "fusion.kd_terms=ce,logit,feature", *overrides)
    torch.manual_seed(0)
    oracle = build_fusion(cfg.fusion, C, dims, packed=False)
    packed = build_fusion(cfg.fusion, C, dims, packed=True)
    packed.load_state_dict(oracle.state_dict())
    inputs, speakers, mask, present, labels = _ragged_batch(dims)
    outs, losses = [], []
    for model in (oracle, packed):
        model.train()  # dropout 0: train mode computes exactly what eval mode does, with gradients
        out = model(inputs, speakers, mask, present)
        loss = stage2_loss(cfg, out, labels, mask)
        loss.backward()
        outs.append(out)
        losses.append(loss)
    for head in outs[0]["logits"]:
        assert torch.allclose(outs[0]["logits"][head][mask], outs[1]["logits"][head][mask], atol=1e-5), head
        assert torch.allclose(outs[0]["features"][head][mask], outs[1]["features"][head][mask], atol=1e-5), head
        assert torch.count_nonzero(outs[1]["logits"][head][~mask]) == 0  # packed outputs are zero at padding
    assert torch.allclose(losses[0], losses[1], atol=1e-6)
    for (name, p_oracle), p_packed in zip(oracle.named_parameters(), packed.parameters()):
        assert p_packed.grad is not None, name
        assert torch.allclose(p_oracle.grad, p_packed.grad, atol=1e-5), name
    # evaluation runs the shared anchor path once per input (training stacks them): the same logits
    with torch.no_grad():
        evaluated = [model.eval()(inputs, speakers, mask, present)["logits"] for model in (oracle, packed)]
    for head in evaluated[0]:
        assert torch.allclose(evaluated[0][head][mask], evaluated[1][head][mask], atol=1e-5), head


def test_packed_attention_on_the_grid_equals_the_block_diagonal_product():
    """Training with attention dropout takes the (B, H, T, T) grid; without it the (N, N) product."""
    _, _, mask, present, _ = _ragged_batch({"text": W, "audio": W})
    rows = PackedRows(mask)
    q, k, v = torch.randn(3, int(mask.sum()), W).unbind(0)
    for key_mask in (mask, present["audio"]):
        block = rows.attend(q, k, v, key_mask, heads=4)
        grid = rows._attend_on_grid(q, k, v, key_mask, heads=4, dropout=None)
        manual = rows._attend_on_grid(q, k, v, key_mask, heads=4, dropout=nn.Identity())
        assert torch.allclose(manual, grid, atol=1e-6)
        assert torch.allclose(block, grid, atol=1e-6)
    # the dialogue with no audio key gets a zero context (the oracle's rule), the others do not
    no_audio = rows.dialogue == 3
    assert torch.count_nonzero(block[no_audio]) == 0 and torch.count_nonzero(block[~no_audio]) > 0


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_cheap_dropout_keeps_1_minus_p_and_rescales_like_nn_dropout(p):
    torch.manual_seed(0)
    mask = keep_mask((1000, 1000), p, "cpu", torch.float32)
    kept = mask > 0
    assert abs(float(kept.float().mean()) - (1 - p)) < 0.002         # 1e6 draws: 4 standard errors is 0.002
    assert torch.all(mask[kept] == 1 / (1 - p))
    # neighbours cut from one 64-bit word are independent: P(both kept) = (1 - p)^2
    pairs = kept.view(-1, 4)
    assert abs(float((pairs[:, 0] & pairs[:, 3]).float().mean()) - (1 - p) ** 2) < 0.004


def test_packed_model_trains_with_cheap_dropout_and_evaluates_without_it():
    dims = {"text": 12, "audio": W, "video": W}
    cfg = fusion_cfg("fusion.dropout=0.3")
    torch.manual_seed(0)
    model = build_fusion(cfg.fusion, C, dims, packed=True)
    assert not any(isinstance(m, nn.Dropout) for m in model.modules())
    assert sum(isinstance(m, CheapDropout) for m in model.modules()) > 10
    assert any(isinstance(m, nn.Dropout) for m in build_fusion(cfg.fusion, C, dims, packed=False).modules())
    inputs, speakers, mask, present, labels = _ragged_batch(dims)
    model.train()
    torch.manual_seed(1)
    a = model(inputs, speakers, mask, present)["logits"]["anchor"]
    torch.manual_seed(1)
    same = model(inputs, speakers, mask, present)["logits"]["anchor"]
    other = model(inputs, speakers, mask, present)["logits"]["anchor"]
    assert torch.equal(a, same) and not torch.equal(a, other)        # seeded by torch's generator
    stage2_loss(cfg, model(inputs, speakers, mask, present), labels, mask).backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    assert torch.equal(model(inputs, speakers, mask, present)["logits"]["anchor"],
                       model(inputs, speakers, mask, present)["logits"]["anchor"])


@pytest.mark.parametrize("keys", [1, 5, 14, 15, 16, 24])
def test_softmax_last_gives_softmax_and_its_gradient_at_any_number_of_keys(keys):
    """softmax_last pads short key dimensions to one CPU vector: same probabilities and gradients as softmax,
    masked (-inf) keys included."""
    g = torch.Generator().manual_seed(keys)
    scores = torch.randn(3, 2, 4, keys, generator=g)
    scores[0, :, :, -1] = float("-inf")  # a masked key (one key: a row of one -inf is NaN in both)
    grad = torch.randn(scores.shape, generator=g)
    x, y = scores.clone().requires_grad_(), scores.clone().requires_grad_()
    expected, got = x.softmax(dim=-1), softmax_last(y)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-6, rtol=0, equal_nan=True)
    expected.backward(grad)
    got.backward(grad)
    assert torch.allclose(y.grad, x.grad, atol=1e-6, rtol=0, equal_nan=True)
