"""One streaming step for many sessions at once: diarizer, speaker-cache update, active speakers, ONE batched
encoder call over every active speaker of every session, batched greedy decoding, transcripts.

Mirrors NeMo's `SpeakerTaggedASR.perform_parallel_streaming_stt_spk` (parallel mode, cache gating) with
`pad_and_drop_preencoded=True`; quirks of that flow are kept on purpose and marked `NeMo:`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mtasr import greedy, spkcache
from mtasr.features import FeatureParams
from mtasr.masking import mask_features
from mtasr.pipeline.chunker import FeatureChunker
from mtasr.pipeline.config import PipelineConfig
from mtasr.pipeline.runner import GraphRunner
from mtasr.pipeline.transcript import Transcript
from mtasr.pipeline.words import LiveTranscript
from mtasr.spec import SAMPLE_RATE, TIMINGS, decoder_joint_spec, diarizer_spec, encoder_spec
from mtasr.spec import ModelDims as Dims


@dataclass
class SpeakerState:
    """One speaker instance of a session: encoder caches and decoder hypothesis (batch row of 1)."""

    cache_last_channel: np.ndarray  # (1, layers, cache, d_model)
    cache_last_time: np.ndarray  # (1, layers, d_model, time)
    cache_last_channel_len: np.ndarray  # (1,)
    decoder: greedy.DecoderState
    started: bool = False  # has been active once (NeMo: its hypothesis is no longer None)
    runs: list[tuple[int, int]] = field(default_factory=list)  # (session step, frames decoded before it)


@dataclass
class Session:
    """All state of one stream; dropped as a whole at END or idle timeout."""

    session_id: str
    chunker: FeatureChunker
    diar: spkcache.SyncSpeakerCacheState
    total_preds: np.ndarray  # (frames, n_spk) latest diarizer probabilities (the cache-gating window)
    transcript: Transcript  # NeMo's arithmetic, kept when timing is "nemo"
    words: LiveTranscript  # audio-time words and utterances, kept when timing is "audio"
    timing: str = TIMINGS[0]
    speakers: dict[int, SpeakerState] = field(default_factory=dict)
    offset: float = 0.0  # start time of the next chunk as NeMo counts it
    steps: int = 0
    pending: list = field(default_factory=list)  # chunks cut but not yet processed: (feats, length)
    samples: int = 0  # audio received

    @property
    def audio_seconds(self) -> float:
        return self.samples / SAMPLE_RATE


@dataclass
class StepOutput:
    """What one step produced for one session."""

    session_id: str
    activity: np.ndarray  # (frames, n_spk) diarizer probabilities of this step's frames
    changed_speakers: set[int]
    active_speakers: list[int]


class Engine:
    """Stateless over sessions: every call gets the sessions it works on."""

    def __init__(self, config: PipelineConfig, features: FeatureParams, runner: GraphRunner) -> None:
        self.cfg = config
        self.features = features
        self.run = runner
        self.dims = Dims(**config.dims)
        self.params = spkcache.SpeakerCacheParams.from_config(config.spkcache)
        self._diar = diarizer_spec(self.dims)
        self._enc = encoder_spec(self.dims)
        self._dj = decoder_joint_spec(self.dims)

    # ------------------------------------------------------------------------------------------ sessions
    def new_session(self, session_id: str, timing: str = TIMINGS[0]) -> Session:
        """A fresh session; `timing` picks the transcript it keeps ("audio" or NeMo's "nemo" arithmetic)."""
        if timing not in TIMINGS:
            raise ValueError(f"unknown timing {timing!r}; use one of {TIMINGS}")
        return Session(
            session_id=session_id,
            chunker=FeatureChunker(self.features, self.cfg.geometry),
            diar=spkcache.init_sync_state(self.params, 1, self.dims.diar_emb_dim),
            total_preds=np.zeros((0, self.params.n_spk), dtype=np.float32),
            transcript=Transcript(self.cfg.frame_len_sec, self.cfg.sent_break_sec),
            words=LiveTranscript(self.cfg.vocabulary, self.cfg.frame_len_sec, self.cfg.nframes_per_chunk,
                                 self.cfg.pause_sec),
            timing=timing,
        )

    def _new_speaker(self) -> SpeakerState:
        d = self.dims
        return SpeakerState(
            cache_last_channel=np.zeros((1, d.enc_layers, d.enc_last_channel, d.enc_d_model), dtype=np.float32),
            cache_last_time=np.zeros((1, d.enc_layers, d.enc_d_model, d.enc_last_time), dtype=np.float32),
            cache_last_channel_len=np.zeros((1,), dtype=np.int64),
            decoder=greedy.init_state(1, d.pred_layers, d.pred_hidden, self.cfg.blank_id),
        )

    def push_audio(self, session: Session, samples: np.ndarray, last: bool = False) -> None:
        """Buffer audio; complete chunks queue up in `session.pending`."""
        chunks = session.chunker.push(samples) if samples.size else []
        session.samples += samples.size
        if last:
            chunks += session.chunker.finish()
        session.pending.extend(chunks)

    # ------------------------------------------------------------------------------------------- a step
    def step(self, sessions: list[Session]) -> list[StepOutput]:
        """Process the oldest pending chunk of each session (all in one batched pass)."""
        work = [(s, s.pending.pop(0)) for s in sessions if s.pending]
        if not work:
            return []
        chunk_preds = self._diarize(work)
        outputs, rows = [], []  # rows: (session, speaker, chunk index in work, targets, bg targets)
        for i, (session, _) in enumerate(work):
            preds = chunk_preds[i]
            span = self.cfg.nframes_per_chunk * self.cfg.cache_gating_buffer_size
            total = np.concatenate([session.total_preds, preds], axis=0)
            session.total_preds = total[-span:] if span else total  # NeMo's [-0:] keeps everything
            session.total_preds[:, self.cfg.max_num_of_spks :] = 0.0
            window = session.total_preds
            if self.cfg.cache_gating:
                active = [s for s in range(self.params.n_spk) if window.shape[0] and window[:, s].max() > 0.5]
                active = active[: self.cfg.max_num_of_spks]
            else:
                active = list(range(self.cfg.max_num_of_spks))
            previous = session.total_preds[-self.cfg.nframes_per_chunk :]  # NeMo: previous_chunk_preds
            for spk in active:
                # NeMo: the "other speakers" are range(len(active)) minus this one, not the other active ids.
                others = [j for j in range(len(active)) if j != spk]
                bg = ((previous[:, others] > 0.5).sum(axis=1) > 0).astype(np.float32)
                for j in range(spk + 1):  # NeMo adds every speaker index up to the new one
                    if j not in session.speakers:
                        session.speakers[j] = self._new_speaker()
                rows.append((session, spk, i, previous[:, spk].astype(np.float32), bg))
            outputs.append(StepOutput(session.session_id, preds, set(), active))
        for length in sorted({work[r[2]][1][1] for r in rows}):  # one call unless a stream's last chunk is short
            self._transcribe(work, [r for r in rows if work[r[2]][1][1] == length])
        for (session, _), out in zip(work, outputs, strict=True):
            session.steps += 1
            if session.timing == "audio":
                self._update_words(session)
            elif out.active_speakers:  # NeMo returns before updating transcripts and offset when nobody is active
                hyps = {spk: (greedy.tokens_to_text(st.decoder.tokens[0], self.cfg.vocabulary),
                              st.decoder.frame_indices[0])
                        for spk, st in sorted(session.speakers.items()) if st.started}
                out.changed_speakers = session.transcript.update(hyps, session.offset)
                session.offset += self.cfg.nframes_per_chunk * self.cfg.frame_len_sec
        return outputs

    def finish(self, session: Session) -> None:
        """After the last step of an ended session: every utterance becomes final (NeMo's transcript has no
        such step)."""
        if session.timing == "audio":
            self._update_words(session, last=True)

    def _update_words(self, session: Session, last: bool = False) -> None:
        decoded = min(session.steps * self.cfg.nframes_per_chunk * self.cfg.frame_len_sec, session.audio_seconds)
        hyps = {spk: (st.decoder.tokens[0], st.decoder.frame_indices[0], st.runs)
                for spk, st in session.speakers.items() if st.started}
        session.words.update(hyps, decoded, session.audio_seconds, session.session_id, last=last)

    def _diarize(self, work) -> list[np.ndarray]:
        """Diarizer calls (one per distinct chunk length), then each session's speaker-cache update."""
        out: dict[int, np.ndarray] = {}
        for length in sorted({w[1][1] for w in work}):
            idx = [i for i, w in enumerate(work) if w[1][1] == length]
            for i, preds in zip(idx, self._diarize_group([work[i] for i in idx]), strict=True):
                out[i] = preds
        return [out[i] for i in range(len(work))]

    def _diarize_group(self, work) -> list[np.ndarray]:
        """One diarizer call for sessions whose chunks have the same length (caches padded, lengths given)."""
        n = len(work)
        d = self.dims
        feats = [w[1][0] for w in work]
        frames = max(f.shape[1] for f in feats)
        chunk = np.zeros((n, frames, feats[0].shape[0]), dtype=np.float32)
        for i, f in enumerate(feats):
            chunk[i, : f.shape[1]] = f.T
        cache_len = np.array([s.diar.spkcache.shape[1] for s, _ in work], dtype=np.int64)
        fifo_len = np.array([s.diar.fifo.shape[1] for s, _ in work], dtype=np.int64)
        cache = np.zeros((n, int(cache_len.max()), d.diar_emb_dim), dtype=np.float32)
        fifo = np.zeros((n, int(fifo_len.max()), d.diar_emb_dim), dtype=np.float32)
        for i, (s, _) in enumerate(work):
            cache[i, : cache_len[i]] = s.diar.spkcache[0]
            fifo[i, : fifo_len[i]] = s.diar.fifo[0]
        feeds = {"chunk": chunk, "chunk_lengths": np.array([w[1][1] for w in work], dtype=np.int64),
                 "spkcache": cache, "spkcache_lengths": cache_len, "fifo": fifo, "fifo_lengths": fifo_len}
        preds, embs, emb_len = self.run(self.cfg.graphs["diarizer"], feeds, self._diar.output_names)
        out = []
        for i, (s, _) in enumerate(work):
            total = int(cache_len[i] + fifo_len[i] + emb_len[i])
            s.diar, chunk_preds = spkcache.streaming_update_sync(
                self.params, s.diar, embs[i : i + 1, : int(emb_len[i])], preds[i : i + 1, :total])
            out.append(chunk_preds[0])
        return out

    def _transcribe(self, work, rows) -> None:
        """ONE encoder call for every active speaker of every session, then batched greedy decoding."""
        feats = []
        for _, _, i, targets, _ in rows:
            f = work[i][1][0][None]
            feats.append(mask_features(f, targets[None]) if self.cfg.masked_asr else f)
        frames = max(f.shape[2] for f in feats)
        signal = np.zeros((len(rows), feats[0].shape[1], frames), dtype=np.float32)
        for r, f in enumerate(feats):
            signal[r, :, : f.shape[2]] = f[0]
        lengths = np.array([work[i][1][1] for _, _, i, _, _ in rows], dtype=np.int64)
        n_enc = int(self.cfg.geometry.encoder_frames(lengths).max())
        spk_t = np.ones((len(rows), n_enc), dtype=np.float32)
        bg_t = np.zeros((len(rows), n_enc), dtype=np.float32)
        if not self.cfg.masked_asr:
            for r, (_, _, _, targets, bg) in enumerate(rows):
                t, b = self._fit(targets, n_enc, 1.0), self._fit(bg, n_enc, 0.0)
                if self.cfg.binary_diar_preds:
                    t, b = (t > 0.5).astype(np.float32), (b > 0.5).astype(np.float32)
                spk_t[r], bg_t[r] = t, b
        states = [session.speakers[spk] for session, spk, _, _, _ in rows]
        for (session, _, _, _, _), s in zip(rows, states, strict=True):
            s.runs.append((session.steps, int(s.decoder.frames[0])))
        feeds = {
            "audio_signal": signal, "length": lengths,
            "cache_last_channel": np.concatenate([s.cache_last_channel for s in states]),
            "cache_last_time": np.concatenate([s.cache_last_time for s in states]),
            "cache_last_channel_len": np.concatenate([s.cache_last_channel_len for s in states]),
            "spk_targets": spk_t, "bg_spk_targets": bg_t,
        }
        encoded, encoded_len, ch, tm, chl = self.run(self.cfg.graphs["encoder"], feeds, self._enc.output_names)
        for r, s in enumerate(states):
            s.cache_last_channel, s.cache_last_time = ch[r : r + 1], tm[r : r + 1]
            s.cache_last_channel_len = chl[r : r + 1]
        dec = greedy.DecoderState.concat([s.decoder for s in states])
        greedy.greedy_decode(self._decoder_step, encoded, encoded_len, dec, self.cfg.blank_id, self.cfg.max_symbols,
                             window=self.cfg.decoder_window)
        for r, s in enumerate(states):
            s.decoder = dec.select([r])
            s.started = True

    @staticmethod
    def _fit(values: np.ndarray, n: int, default: float) -> np.ndarray:
        """NeMo's `solve_length_mismatch`: keep the last n values, or left-pad with `default`."""
        if values.shape[0] >= n:
            return values[values.shape[0] - n :]
        return np.pad(values, (n - values.shape[0], 0), constant_values=default)

    def _decoder_step(self, frame, targets, h, c):
        return self.run(self.cfg.graphs["decoder_joint"], {"encoder_frame": frame, "targets": targets, "h_in": h,
                                                           "c_in": c}, self._dj.output_names)
