"""The embedded default dataset: synthetic multimodal conversations with planted effects.

    dataset = generate(DataConfig())       # 120 train dialogues, 30 dev, 30 test; about a second

`data.synthetic_test_dialogues` sets the test split's size on its own (0: a quarter of the training
dialogues, like dev). Each split has its own random stream, so a larger test set leaves train and dev
exactly as they were and only adds test dialogues after the same first ones.

Everything is fixed by `data.synthetic_seed` (not by the trial seed), so every trial of a sweep sees
the same data and the stage-1 cache is shared.

What is generated
-----------------
Six emotions (`LABELS`). A dialogue has 4-12 utterances by 2-4 speakers (no one speaks twice in a
row). Emotions follow the conversation: a speaker keeps their previous emotion with probability
0.6 (`PERSIST`), otherwise catches the previous utterance's emotion with probability 0.25
(`CONTAGION`), otherwise feels a uniformly random emotion. Labels are roughly balanced.

- **Text** is built from templates. With probability `min(1, 0.85 * text_signal)` an utterance
  carries a cue: a *strong* cue word unique to its emotion (75% of cues, e.g. "furious"), or a
  *weak* cue word shared with one partner emotion (25%, e.g. "ugh" for anger and disgust). The
  rest is ambiguous: neutral small talk, or (when the speaker's emotion persisted, 40% of those)
  a *continuation* like "I still feel the same way." whose meaning is the speaker's previous
  emotion, which only the dialogue context reveals.
- **Audio**: an `audio_seconds` waveform at `sample_rate`: a harmonic tone whose pitch (one
  frequency per emotion, 130-397 Hz, 1.25x apart; +-4% per speaker), tempo (2-8 Hz amplitude
  modulation, like syllables) and energy come from the *expressed* emotion, over a voiced span of
  random length, plus white noise. (Energy is normalised away by data2vec-style input
  normalisation; pitch and tempo remain.) The expressed emotion is the true one with probability
  `min(1, audio_signal)`, otherwise a uniformly random one (people do not always sound like they
  feel).
- **Video**: `frames` frames of 3 x `frame_size` x `frame_size` in [0, 1]: a speaker-tinted gray
  background with pixel noise, and the top or bottom half tinted in red, green or blue: the six
  (half, colour) pairs are the six expressed emotions; amplitude `0.15 + 0.3 * min(1,
  video_signal)`, wobbling by a pixel between frames. Large and aligned with 8-pixel patches, so
  a tiny TimeSformer picks it up within a few epochs. Expressed emotion = the true one with
  probability `min(1, video_signal)`, otherwise random.
- `noise_modality=audio` (or video, or text) draws that modality's expressed emotion (for text:
  its cue) independently of the label.

Planted mechanisms, one per MAGTKD part (each off at 0, the default, so the data above are unchanged)
--------------------------------------------------------------------------------------------------------
- `data.context_share` (prompt learning): when an emotion is drawn afresh (neither kept nor caught, and not
  the dialogue's first turn), with this probability the turn is a *reply* that names no emotion ("Don't even
  ask.", `REPLIES`) in a flat voice and face (audio and video express a random emotion), and the turn before
  it ends by asking about an event that stirs exactly that emotion ("Any news on the parking ticket?":
  `EVENTS`, anger). The event says nothing about the asking turn's own emotion, so an encoder trained on
  each utterance alone has no reason to keep it, and the reply's own label is new to the dialogue, so no
  earlier label gives it away either: only a text encoder that reads the earlier turn together with the
  reply (the prompt) can resolve it. (An earlier version made replies repeat the speaker's previous
  emotion; stage 2 resolved those from the dialogue by itself, so the prompt had nothing to add.)
- `data.train_label_noise` (stage-1 KD): that share of the *train* labels is redrawn uniformly (dev and
  test stay clean). Text cues keep following the true emotion, so the text teacher's soft labels are
  cleaner than the hard labels the audio/video students would otherwise learn from alone.
- `data.corrupt_share` (anchor gating): that share of dialogues has a bad audio line: loud white noise
  (`BAD_LINE_NOISE`, audible) and a random expressed emotion throughout. Audio is informative in the
  other dialogues only; a gate conditioned on the anchor can learn to shut it where it is corrupted.
- `data.speaker_prior` (speaker embeddings): when an emotion is drawn afresh (neither kept nor caught),
  with this probability it is the speaker role's habitual one (`ROLE_EMOTION`: 1st speaker to appear
  anger, 2nd joy, 3rd sadness, 4th fear), numbered as the model numbers speakers (order of first
  appearance in the dialogue).
`ablations/demo.yaml` turns all four on and writes down what each row of its table must show.

Planted effects (the known right answers the ablation framework is tested against)
-----------------------------------------------------------------------------------
With the defaults (text 1.0, audio 0.6, video 0.35), per utterance and without context, the
best achievable (Bayes) accuracy is 0.77 from text (85% cued; weak cues half right), 0.67 from
audio (60% faithful + chance), 0.46 from video (35% faithful + chance) and 0.92 from all three;
chance is 1/6. So:

1. text alone > audio alone > video alone > chance;
2. all three together > text alone: 15% of the text is ambiguous and another 21% has only a
   weak cue that needs a second opinion, which audio and video supply independently;
3. dialogue context helps: speakers persist in their emotion and continuations refer back;
4. with `noise_modality=M`, M carries no label information at all while looking exactly as usual
   (same shapes and statistics): a model should gain nothing from it.

Measured with logistic regression on simple hand features (bag of words, FFT magnitude in pitch
bands, pooled pixels), dev accuracy over synthetic seeds 0-3: text 0.75-0.80, audio 0.60-0.70,
video 0.41-0.50, all 0.79-0.86 (`tests/test_data_synthetic.py` checks 1, 2 and 4 this way). The
tiny stage-1 encoders (KD on, 8 epochs, lr 3e-3, width 32) reached dev accuracy text 0.73, audio
0.62, video 0.35 on seed 0.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.schema import SPLITS, Dialogue, DialogueDataset, Utterance

LABELS = ["anger", "disgust", "fear", "joy", "sadness", "surprise"]
PARTNER = {"anger": "disgust", "disgust": "anger", "fear": "sadness", "sadness": "fear",
           "joy": "surprise", "surprise": "joy"}

MECHANISMS = ("context_share", "train_label_noise", "corrupt_share", "speaker_prior")  # data.* knobs, 0 = off
PERSIST = 0.6            # a speaker keeps their previous emotion
CONTAGION = 0.25         # ... else catches the previous utterance's emotion
CUE_PER_SIGNAL = 0.85    # P(text cue) = min(1, 0.85 * text_signal)
STRONG_SHARE = 0.75      # of the cues, unique to the emotion; the rest are shared with PARTNER
CONTINUATION = 0.4       # of ambiguous utterances whose speaker persisted: "I still feel the same"
FAITHFUL_PER_SIGNAL = 1.0   # P(audio/video express the true emotion) = min(1, signal)

STRONG = {
    "anger": ["furious", "livid", "outraged", "fuming"],
    "disgust": ["disgusting", "gross", "revolting", "nauseating"],
    "fear": ["terrified", "scared", "frightened", "panicking"],
    "joy": ["delighted", "thrilled", "overjoyed", "wonderful"],
    "sadness": ["heartbroken", "miserable", "devastated", "gloomy"],
    "surprise": ["astonished", "stunned", "amazed", "speechless"],
}
WEAK = {  # shared by an emotion and its PARTNER: half a clue
    frozenset(("anger", "disgust")): ["ugh", "annoyed", "fed up", "awful"],
    frozenset(("fear", "sadness")): ["worried", "uneasy", "down", "nervous"],
    frozenset(("joy", "surprise")): ["wow", "oh", "really", "incredible"],
}
TOPICS = ["the meeting", "your sister", "the car", "dinner", "the new job", "that phone call",
          "the apartment", "the trip", "the game", "the letter", "the wedding", "my boss",
          "the neighbours", "the interview", "the party", "the rent"]
FILLERS = ["okay", "well", "so", "you know", "listen", "anyway", "right", "hey"]
STRONG_TEMPLATES = ["I am {mod} {cue} about {topic}.", "{filler}, {topic} has me {cue}.",
                    "{cue}! that is how {topic} makes me feel.", "honestly I feel {mod} {cue}.",
                    "{filler}, I'm {cue} after {topic}."]
WEAK_TEMPLATES = ["{cue}, {topic} again.", "{filler}, {cue} about {topic}.",
                  "{cue}... I heard about {topic}.", "it's {topic}, {cue}."]
NEUTRAL_TEMPLATES = ["{filler}, what about {topic}?", "let's talk about {topic}.",
                     "I was thinking about {topic}.", "did you hear about {topic}?",
                     "{filler}, {topic} is tomorrow.", "tell me about {topic}."]
CONTINUATIONS = ["I still feel the same way.", "nothing has changed for me.",
                 "like I said before.", "same as before, really."]
# data.context_share: a reply that names no emotion, and the question before it, about an event whose emotion
# the reply takes. No event word is a cue, a topic or part of a template above.
REPLIES = ["you can guess how that went.", "don't even ask.", "let me tell you about that.",
           "well, what do you think?"]
ASK_TEMPLATES = ["and how did {event} go?", "any news on {event}?", "what happened with {event}?"]
EVENTS = {
    "anger": ["the parking ticket", "the rude waiter"],
    "disgust": ["the moldy fridge", "the clogged drain"],
    "fear": ["the lab results", "the dark alley"],
    "joy": ["the lottery ticket", "the promotion"],
    "sadness": ["the funeral", "the breakup"],
    "surprise": ["the plot twist", "the sudden visit"],
}
MODIFIERS = ["so", "really", "absolutely", "totally", "quite"]
NAMES = ["Alex", "Blair", "Casey", "Drew", "Emery", "Finley", "Gray", "Harper", "Indy", "Jordan",
         "Kai", "Logan", "Morgan", "Noel", "Parker", "Quinn", "Reese", "Sage", "Taylor", "Wren"]

LINE_NOISE = 0.05        # white-noise level of a normal recording
BAD_LINE_NOISE = 0.35    # ... of a corrupted dialogue's audio (data.corrupt_share): audible, so a gate can learn it
ROLE_EMOTION = ["anger", "joy", "sadness", "fear"]  # habitual emotion of the 1st..4th speaker (data.speaker_prior)

# Prosody of each expressed emotion: pitch in Hz (distinct tones 1.25x apart), energy, tempo in Hz.
PITCH = {"sadness": 130.0, "disgust": 162.5, "surprise": 203.1, "joy": 253.9, "anger": 317.4, "fear": 396.7}
ENERGY = {"anger": 0.9, "disgust": 0.6, "fear": 0.45, "joy": 0.8, "sadness": 0.35, "surprise": 0.7}
TEMPO = {"anger": 7.0, "disgust": 3.0, "fear": 8.0, "joy": 5.0, "sadness": 2.0, "surprise": 6.0}


@dataclass
class PlantedTurn:
    """What the generator planted in one utterance: which channels carry its true label (`generate(trace=...)`).

    Drawn from the same random stream as the data, so asking for it changes nothing that is generated."""
    split: str
    dialogue_id: str
    utterance_id: str
    label: int                  # the true emotion (before any train label noise)
    origin: str                 # "persisted" (the speaker's previous emotion), "caught" (the turn before's), "fresh"
    source: str                 # the utterance_id whose label a persisted or caught turn copies ("" when fresh)
    role_emotion: int           # the speaker role's habitual emotion (`ROLE_EMOTION`; its pull is data.speaker_prior)
    role_drawn: bool            # fresh and set to that habitual emotion by data.speaker_prior
    reply: bool                 # a reply only the question in the turn before resolves (data.context_share)
    corrupt: bool               # the dialogue's audio is a bad line (data.corrupt_share)
    text_cue: str               # "strong" (names the emotion), "weak" (one of two), "continuation", "none"
    audio_true: bool            # the clip expresses the true emotion by design (not by a random draw's chance)
    video_true: bool            # ... the frames do
    label_noised: bool = False  # train only: the stored label was redrawn (data.train_label_noise)


def generate(data_cfg, trace: list[PlantedTurn] | None = None) -> DialogueDataset:
    """The synthetic dataset for `data_cfg` (a `core.config.DataConfig`); deterministic by its seed.

    With a `trace` list, one `PlantedTurn` per utterance is appended to it (benchmarks/demo_footprint.py)."""
    quarter = max(1, data_cfg.synthetic_dialogues // 4)
    counts = {"train": data_cfg.synthetic_dialogues, "dev": quarter,
              "test": data_cfg.synthetic_test_dialogues or quarter}
    # One independent stream per split: the dev/test data do not move when only train grows.
    streams = np.random.SeedSequence(data_cfg.synthetic_seed).spawn(len(SPLITS))
    splits = {split: _split(np.random.default_rng(stream), split, counts[split], data_cfg, trace)
              for split, stream in zip(SPLITS, streams)}
    test = f", test dialogues={counts['test']}" if data_cfg.synthetic_test_dialogues else ""
    source = (f"synthetic(seed={data_cfg.synthetic_seed}, dialogues={data_cfg.synthetic_dialogues}{test}, "
              f"signals text={data_cfg.text_signal} audio={data_cfg.audio_signal} "
              f"video={data_cfg.video_signal}, noise={data_cfg.noise_modality or 'none'})")
    knobs = {k: getattr(data_cfg, k) for k in MECHANISMS if getattr(data_cfg, k) > 0}
    if knobs:
        source = source[:-1] + ", " + ", ".join(f"{k}={v}" for k, v in knobs.items()) + ")"
    notes = []
    if data_cfg.noise_modality:
        notes.append(f"synthetic: {data_cfg.noise_modality} carries no label information (noise_modality)")
    return DialogueDataset(name="synthetic", labels=list(LABELS), splits=splits,
                           sample_rate=data_cfg.sample_rate, source=source, notes=notes)


# ---- dialogue structure ---------------------------------------------------------------------

def _split(rng: np.random.Generator, split: str, n: int, cfg, trace: list[PlantedTurn] | None) -> list[Dialogue]:
    k = len(LABELS)
    p_cue = min(1.0, CUE_PER_SIGNAL * cfg.text_signal)
    faithful = {m: 0.0 if cfg.noise_modality == m else min(1.0, FAITHFUL_PER_SIGNAL * getattr(cfg, f"{m}_signal"))
                for m in ("audio", "video")}
    dialogues = []
    for d in range(n):
        # Anchor-gating mechanism: in a corrupted dialogue the audio is a bad line (loud, tells nothing).
        corrupt = cfg.corrupt_share > 0 and rng.random() < cfg.corrupt_share
        n_speakers = int(rng.integers(2, 5))
        names = list(rng.choice(NAMES, size=n_speakers, replace=False))
        voice = {s: float(rng.uniform(0.96, 1.04)) for s in names}        # pitch factor per speaker
        loudness = {s: float(rng.uniform(0.85, 1.15)) for s in names}
        tint = {s: rng.uniform(-0.08, 0.08, size=3).astype(np.float32) for s in names}  # face colour
        last: dict[str, int] = {}
        last_turn: dict[str, str] = {}   # speaker -> their previous utterance_id (the trace's `source`)
        prev_speaker, prev_label = None, None
        roles: dict[str, int] = {}   # order of first appearance: what the model's speaker ids number
        utterances = []
        for u in range(int(rng.integers(4, 13))):
            choices = [s for s in names if s != prev_speaker]
            speaker = choices[int(rng.integers(len(choices)))]
            role = roles.setdefault(speaker, len(roles))
            persisted = fresh = role_drawn = False
            if speaker in last and rng.random() < PERSIST:
                label, persisted = last[speaker], True
            elif prev_label is not None and rng.random() < CONTAGION:
                label = prev_label
            else:
                label, fresh = int(rng.integers(k)), True
                if cfg.speaker_prior > 0 and rng.random() < cfg.speaker_prior:   # speakers mechanism
                    label, role_drawn = LABELS.index(ROLE_EMOTION[role]), True
            # Prompt mechanism: a fresh emotion, named only by the event the turn before asks about.
            context_only = bool(fresh and utterances and cfg.context_share > 0
                                and rng.random() < cfg.context_share)
            if context_only:
                text, cue = _pick(rng, REPLIES).capitalize(), "none"
                ask = _pick(rng, ASK_TEMPLATES).format(event=_pick(rng, EVENTS[LABELS[label]]))
                utterances[-1].text = f"{utterances[-1].text} {ask[0].upper()}{ask[1:]}"
            else:
                text, cue = _text(rng, label, persisted, p_cue, cfg.noise_modality == "text")
            p_audio = 0.0 if context_only or corrupt else faithful["audio"]
            p_video = 0.0 if context_only else faithful["video"]
            audio_true = rng.random() < p_audio     # the clip/frames express the true emotion by design
            expressed_a = label if audio_true else int(rng.integers(k))
            video_true = rng.random() < p_video
            expressed_v = label if video_true else int(rng.integers(k))
            wave = _waveform(rng, LABELS[expressed_a], voice[speaker], loudness[speaker], cfg,
                             BAD_LINE_NOISE if corrupt else LINE_NOISE)
            frames = _frames(rng, expressed_v, tint[speaker], cfg)
            utterances.append(Utterance(speaker=speaker, text=text, label=label,
                                        utterance_id=f"{split}{d}_u{u}", waveform=wave, frames=frames))
            if trace is not None:
                origin = "persisted" if persisted else "fresh" if fresh else "caught"
                copied = last_turn[speaker] if persisted else "" if fresh else utterances[-2].utterance_id
                trace.append(PlantedTurn(split, f"{split}{d}", f"{split}{d}_u{u}", label, origin, copied,
                                         LABELS.index(ROLE_EMOTION[role]), role_drawn,
                                         context_only, corrupt, cue, bool(audio_true), bool(video_true)))
            last[speaker], last_turn[speaker] = label, f"{split}{d}_u{u}"
            prev_speaker, prev_label = speaker, label
        dialogues.append(Dialogue(dialogue_id=f"{split}{d}", utterances=utterances))
    if split == "train" and cfg.train_label_noise > 0:
        # Stage-1 KD mechanism: annotation noise in train only. The cues still follow the true emotion, so
        # the text teacher's soft labels are cleaner than the audio/video students' hard labels.
        planted = {t.utterance_id: t for t in trace if t.split == split} if trace is not None else {}
        for dialogue in dialogues:
            for utt in dialogue.utterances:
                if rng.random() < cfg.train_label_noise:
                    utt.label = int(rng.integers(k))
                    if utt.utterance_id in planted:
                        planted[utt.utterance_id].label_noised = True
    return dialogues


def is_reply(text: str) -> bool:
    """True for a data.context_share reply (which may itself end with the next reply's question)."""
    return any(text.startswith(r[0].upper() + r[1:]) for r in REPLIES)


def _pick(rng: np.random.Generator, items: list[str]) -> str:
    return items[int(rng.integers(len(items)))]


def _text(rng: np.random.Generator, label: int, persisted: bool, p_cue: float, noise: bool) -> tuple[str, str]:
    """An utterance's text and what it tells of `label`: "strong", "weak", "continuation" or "none"."""
    if noise:  # same look, emotion drawn independently of the label
        label = int(rng.integers(len(LABELS)))
    emotion = LABELS[label]
    fill = {"topic": _pick(rng, TOPICS), "filler": _pick(rng, FILLERS), "mod": _pick(rng, MODIFIERS)}
    if rng.random() < p_cue:
        if rng.random() < STRONG_SHARE:
            text, cue = _pick(rng, STRONG_TEMPLATES).format(cue=_pick(rng, STRONG[emotion]), **fill), "strong"
        else:
            cue = _pick(rng, WEAK[frozenset((emotion, PARTNER[emotion]))])
            text, cue = _pick(rng, WEAK_TEMPLATES).format(cue=cue, **fill), "weak"
    elif persisted and not noise and rng.random() < CONTINUATION:
        text, cue = _pick(rng, CONTINUATIONS), "continuation"
    else:
        text, cue = _pick(rng, NEUTRAL_TEMPLATES).format(**fill), "none"
    return text[0].upper() + text[1:], "none" if noise else cue


# ---- media ------------------------------------------------------------------------------------

def _waveform(rng: np.random.Generator, emotion: str, voice: float, loudness: float, cfg,
              noise: float = 0.05) -> np.ndarray:
    sr, n = cfg.sample_rate, max(1, int(round(cfg.sample_rate * cfg.audio_seconds)))
    t = np.arange(n, dtype=np.float32) / np.float32(sr)                    # (n,) float32 keeps this fast
    phase = rng.uniform(0, 2 * np.pi, size=4).astype(np.float32)
    theta = np.float32(2 * np.pi * PITCH[emotion] * voice) * t
    tone = np.sin(theta + phase[0])                                        # a harmonic tone at the pitch
    tone += np.float32(0.5) * np.sin(2 * theta + phase[1])
    tone += np.float32(0.25) * np.sin(3 * theta + phase[2])
    syllables = np.sin(np.float32(2 * np.pi * TEMPO[emotion]) * t + phase[3])  # tempo: amplitude modulation
    syllables = np.float32(0.55) + np.float32(0.45) * syllables
    length = int(n * rng.uniform(0.6, 1.0))                                # speech spans 60-100% of the clip
    start = int(rng.integers(0, n - length + 1))
    wave = rng.standard_normal(n, dtype=np.float32) * np.float32(noise)    # white noise everywhere
    gain = np.float32(ENERGY[emotion] * loudness / 1.75)
    wave[start:start + length] += gain * (syllables * tone)[start:start + length]
    return np.clip(wave, -1.0, 1.0, out=wave)


def _frames(rng: np.random.Generator, expressed: int, tint: np.ndarray, cfg) -> np.ndarray:
    t, s = cfg.frames, cfg.frame_size
    video = rng.standard_normal((t, 3, s, s), dtype=np.float32)          # (T, C, H, W) pixel noise
    video *= np.float32(0.08)
    video += (np.float32(rng.uniform(0.3, 0.55)) + tint)[None, :, None, None]  # speaker-tinted gray
    amplitude = np.float32(0.15 + 0.3 * min(1.0, cfg.video_signal))
    half, channel = expressed // 3, expressed % 3                          # top/bottom half x colour
    top, bottom, left, right = (s // 2) * half, (s // 2) * (half + 1), 0, s
    jitter = rng.integers(-1, 2, size=(t, 2))                              # the patch wobbles a pixel
    for i in range(t):
        y0, y1 = max(top + int(jitter[i, 0]), 0), min(bottom + int(jitter[i, 0]), s)
        x0, x1 = max(left + int(jitter[i, 1]), 0), min(right + int(jitter[i, 1]), s)
        video[i, :, y0:y1, x0:x1] -= np.float32(0.1)
        video[i, channel, y0:y1, x0:x1] += amplitude + np.float32(0.1)
    return np.clip(video, 0.0, 1.0, out=video)
