"""Hugging Face causal-LM wrapper of hybridlab's HybridLM (needs the `hybridlab` package installed): the weights
are HybridLM's own state dict under `model.`, so the logits are those of the project's model.

forward() takes input_ids or inputs_embeds (no padding: an attention_mask must be all ones), returns the logits,
the loss for `labels`, the residual stream before each block and after the last (output_hidden_states) and,
for output_attentions, every attention layer's softmax probabilities [B, H, T, T] computed from its queries and
keys with the model's own mask (windows, sinks; None for recurrent layers). config.receptive_full /
receptive_efficient constrain the layers as hybridlab.models.Receptive does. No KV cache here: generation goes
through `hybridlab lm-eval` (HybridLM's own caches).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from hybridlab.models.attention import allowed
from hybridlab.models.hybrid import HybridLM, ModelShape, Receptive
from hybridlab.models.layout import LayerSpec

from .configuration_hybridlab import HybridLabConfig


def layer_specs(layout: list[dict]) -> list[LayerSpec]:
    return [LayerSpec(s["kind"], s["role"], bool(s["rope"]), tuple(s.get("windows") or ()), int(s.get("sinks", 0)))
            for s in layout]


class HybridLabForCausalLM(PreTrainedModel):
    config_class = HybridLabConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"

    def __init__(self, config: HybridLabConfig):
        super().__init__(config)
        shape = dict(config.shape)
        shape["mixer_inner"] = {str(k): int(v) for k, v in shape.get("mixer_inner", {}).items()}
        self.model = HybridLM(ModelShape(**shape), layer_specs(config.layout))
        self.post_init()

    def _init_weights(self, module) -> None:
        """HybridLM initialises its own parameters; from_pretrained then loads the saved ones."""

    def get_input_embeddings(self):
        return self.model.embed

    def set_input_embeddings(self, value) -> None:
        self.model.embed = value

    def get_output_embeddings(self):
        return self.model.lm_head

    def receptive(self) -> Receptive:
        return Receptive(full=self.config.receptive_full, efficient=self.config.receptive_efficient)

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                output_hidden_states: bool | None = None, output_attentions: bool | None = None,
                return_dict: bool | None = None, use_cache: bool | None = None, **kwargs) -> CausalLMOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("HybridLabForCausalLM: give exactly one of input_ids and inputs_embeds")
        if attention_mask is not None and not bool(attention_mask.bool().all()):
            raise ValueError("HybridLabForCausalLM: padded inputs (an attention_mask with zeros) are not supported; "
                             "score each sequence on its own or pad on the right without a mask")
        handle = None
        if inputs_embeds is not None:
            input_ids = torch.zeros(inputs_embeds.shape[:2], dtype=torch.long, device=inputs_embeds.device)
            handle = self.model.embed.register_forward_hook(lambda *_: inputs_embeds)
        layers = [i for i, b in enumerate(self.model.blocks) if b.spec.is_attention]
        capture = {i: {} for i in layers} if output_attentions else None
        receptive = self.receptive()
        try:
            out = self.model(input_ids, receptive=receptive, capture=capture, return_hidden=bool(output_hidden_states))
        finally:
            if handle is not None:
                handle.remove()
        logits, hidden = out if output_hidden_states else (out, None)
        attentions = None
        if output_attentions:
            attentions = tuple(self._probs(i, capture[i], receptive) if i in capture else None
                               for i in range(len(self.model.blocks)))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits, hidden_states=None if hidden is None else tuple(hidden),
                                      attentions=attentions)

    def _probs(self, layer: int, cap: dict, receptive: Receptive) -> torch.Tensor:
        """Softmax attention [B, H, Tq, Tk] of one layer from its captured (post-RoPE) queries and keys."""
        mixer = self.model.blocks[layer].mixer
        windows = mixer.effective_windows(receptive.full, receptive.efficient)
        win = torch.tensor([0 if w is None else w for w in windows], device=cap["q"].device)
        mask = allowed(cap["q_pos"], cap["k_pos"], win, mixer.sinks)
        scores = (cap["q"].float() @ cap["k"].float().transpose(-1, -2)) * mixer.head_dim ** -0.5
        return scores.masked_fill(~mask[None], float("-inf")).softmax(-1).to(cap["q"].dtype)
