"""The RNNT prediction network and joint of a NeMo model as plain arrays (`mtasr.rnnt.RnntWeights`): what the
serving pipeline's batched greedy decoder computes with (numpy, or CuPy on a GPU)."""

from __future__ import annotations

import numpy as np

from mtasr.rnnt import LstmLayer, RnntWeights


def _np(t) -> np.ndarray:
    return t.detach().cpu().float().numpy().copy()


def rnnt_weights_from_nemo(asr) -> RnntWeights:
    """Weights of `asr.decoder` (embedding, LSTM) and `asr.joint` (projections, output layer).

    Checks the structure the decoder assumes (NeMo's `RNNTDecoder` with blank as padding, an `LSTM` without
    projections or layer norm, `RNNTJoint` = ReLU + Linear after the sum of the projections); anything else is
    refused rather than decoded differently.
    """
    import torch

    pred, joint = asr.decoder.prediction, asr.joint
    lstm = pred["dec_rnn"].lstm
    if not isinstance(lstm, torch.nn.LSTM) or lstm.proj_size or lstm.bidirectional or not lstm.bias:
        raise ValueError(f"unsupported prediction network {lstm!r}: a plain uni-directional LSTM with biases")
    if not asr.decoder.blank_as_pad:
        raise ValueError("unsupported prediction network: blank must be the embedding's padding row")
    layers = [m for m in joint.joint_net if not isinstance(m, torch.nn.Dropout)]
    if len(layers) != 2 or not isinstance(layers[0], torch.nn.ReLU) or not isinstance(layers[1], torch.nn.Linear):
        raise ValueError(f"unsupported joint network {joint.joint_net!r}: ReLU then Linear")
    embedding = _np(pred["embed"].weight)
    embedding[asr.decoder.blank_idx] = 0.0  # the padding row (already zero in a trained model)
    return RnntWeights(
        embedding=embedding,
        lstm=tuple(LstmLayer(*(_np(getattr(lstm, f"{name}_l{k}")) for name in ("weight_ih", "weight_hh", "bias_ih",
                                                                            "bias_hh")))
                   for k in range(lstm.num_layers)),
        enc_w=_np(joint.enc.weight), enc_b=_np(joint.enc.bias), pred_w=_np(joint.pred.weight),
        pred_b=_np(joint.pred.bias), out_w=_np(layers[1].weight), out_b=_np(layers[1].bias))
