"""Sampling of the generating heads: `generate` over the text decoder ([`OptTriForConditionalGeneration`]) and over
the code decoders ([`OptTriForTextToImage`], [`OptTriForTextToAudio`]) through `GenerationMixin`, with the code
budget, the suppressed special ids and the tokenizer checks."""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicCache

from .modeling_opt_tri_decoders import (
    _cache_argument,
    _check_decoder_ids,
    _check_generate_arguments,
    _check_code_generate_arguments,
    _check_sampling_arguments,
    _private_rng,
    _states_mask,
)
from .modeling_opt_tri_outputs import OptTriCodeGenerationOutput


class OptTriTextSamplingMixin:
    """`generate` of [`OptTriForConditionalGeneration`] (a head with `encode` and `text_decoder`), listed before
    `GenerationMixin` in its bases."""

    @torch.no_grad()
    def generate(
        self,
        pixel_values=None,
        image_mask=None,
        input_features=None,
        audio_attention_mask=None,
        encoder_input_ids=None,
        encoder_attention_mask=None,
        input_ids=None,
        attention_mask=None,
        encoder_hidden_states=None,
        encoder_states_mask=None,
        token_type_ids=None,
        **generate_kwargs,
    ):
        """
        `GenerationMixin.generate` (greedy, sampling, beam search, beam sampling, assisted and prompt-lookup decoding;
        KV cache) after encoding the conditioning inputs once (or with precomputed `encoder_hidden_states`).
        `input_ids` / `attention_mask` are optional decoder prompts, left-padded in a batch (default: the BOS token);
        continuing from a returned cache, pass the whole sequence so far with `cache=`. A prompt tokenised by the
        processor (what the `image-text-to-text` pipeline sends: `[CLS] text [SEP]` with `token_type_ids`) is
        continued without its closing `[SEP]`, the decoder's end token. Returns token ids `(B, length)` (or a
        `GenerateOutput` with `return_dict_in_generate=True`).
        """
        _check_generate_arguments(generate_kwargs)
        cache = _cache_argument(generate_kwargs.pop("cache", None), generate_kwargs)
        if cache is not None:
            generate_kwargs["cache"] = cache
        if encoder_hidden_states is None:
            encoder_hidden_states, encoder_states_mask = self.encode(
                pixel_values, image_mask, input_features, audio_attention_mask, encoder_input_ids, encoder_attention_mask
            )
        encoder_states_mask = _states_mask(encoder_hidden_states, encoder_states_mask)
        dc = self.config.text_decoder_config
        batch = encoder_hidden_states.shape[0]
        if input_ids is None:
            input_ids = torch.full((batch, 1), dc.bos_token_id, dtype=torch.long, device=encoder_hidden_states.device)
        _check_decoder_ids(input_ids, dc.vocab_size, batch, "input_ids (the decoder prompt)")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if token_type_ids is not None:
            input_ids, attention_mask = _open_processor_prompt(input_ids, attention_mask, token_type_ids, dc.eos_token_id)
        if attention_mask.ndim != 2 or attention_mask.shape[0] != batch:
            raise ValueError(f"attention_mask must have shape ({batch}, length), got {tuple(attention_mask.shape)}")
        generate_kwargs.setdefault("bos_token_id", dc.bos_token_id)
        generate_kwargs.setdefault("eos_token_id", dc.eos_token_id)
        generate_kwargs.setdefault("pad_token_id", dc.pad_token_id)
        return super().generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            encoder_hidden_states=encoder_hidden_states,
            encoder_states_mask=encoder_states_mask,
            **generate_kwargs,
        )


def _open_processor_prompt(input_ids, attention_mask, token_type_ids, eos_token_id):
    """The decoder prompt of a processor-tokenised text `(B, L)`: one segment (the text decoder has no token types),
    without the closing end token when every row ends with it (a finished sequence is not continued)."""
    if tuple(token_type_ids.shape) != tuple(input_ids.shape) or bool(token_type_ids.ne(0).any()):
        raise ValueError(
            "token_type_ids must be all zeros and shaped like input_ids: the text decoder prompt is one segment, got "
            f"shape {tuple(token_type_ids.shape)} for input_ids {tuple(input_ids.shape)}"
        )
    if input_ids.shape[1] > 1 and bool(input_ids[:, -1].eq(eos_token_id).all()):
        return input_ids[:, :-1], attention_mask[:, :-1]
    return input_ids, attention_mask


class OptTriCodeSamplingMixin:
    """`generate` and its helpers for a head with `encode`, `decoder_config`, `code_decoder` and `code_head`
    ([`OptTriCodeGenerationModel`]); listed before `GenerationMixin` in the head's bases, whose `generate` its own
    calls."""

    def prepare_inputs_for_generation(self, input_ids, *args, **kwargs):
        """`GenerationMixin`'s inputs of one step (every keyword argument is passed on), with the decoder ids and
        mask under this head's names (`input_ids` of `forward` are the text prompt)."""
        inputs = super().prepare_inputs_for_generation(input_ids, *args, **kwargs)
        for name in ("input_ids", "attention_mask", "position_ids"):
            if name in inputs:
                inputs[f"decoder_{name}"] = inputs.pop(name)
        inputs.pop("decoder_position_ids", None)  # the code decoder counts positions itself
        return inputs

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        image_mask: torch.LongTensor | None = None,
        input_features: torch.FloatTensor | None = None,
        audio_attention_mask: torch.LongTensor | None = None,
        encoder_hidden_states: torch.FloatTensor | None = None,
        encoder_states_mask: torch.LongTensor | None = None,
        do_sample: bool = True,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
        num_return_sequences: int = 1,
        max_new_codes: int | None = None,
        min_new_codes: int = 1,
        use_cache: bool = True,
        **generate_kwargs,
    ) -> OptTriCodeGenerationOutput:
        r"""
        Generate codes conditioned on the inputs (encoded once) with `GenerationMixin.generate`: sampling or greedy
        decoding, beam search (`num_beams`), beam sampling, prompt-lookup decoding, with a KV cache.

        Args:
            input_ids (`(B, L)`), attention_mask, token_type_ids: the text prompt (tokenised by the processor).
            pixel_values, image_mask, input_features, audio_attention_mask: other conditioning inputs.
            encoder_hidden_states (`(B, S, hidden)`), encoder_states_mask (`(B, S)`): precomputed states instead.
            do_sample (`bool`, defaults to `True`): sample (with `temperature`, `top_k`, `top_p`); `False` is greedy
                (or beam search with `num_beams > 1`).
            temperature (`float`, defaults to 1.0): divides the logits before sampling.
            top_k (`int`, defaults to 0): sample among the `top_k` most likely codes only (0: all).
            top_p (`float`, defaults to 1.0): nucleus sampling: among the fewest codes whose probability reaches
                `top_p` (1.0: all).
            seed (`int`, *optional*): the same seed gives the same codes, and the global RNG's state is restored
                afterwards. `None` samples from the global RNG. (The model must be in eval mode, or active dropout
                also draws from the global RNG.)
            num_return_sequences (`int`, defaults to 1): samples per input (consecutive in the output).
            max_new_codes (`int`, *optional*): audio only: the most codes per clip (default and upper bound:
                `audio_decoder_config.num_codes`). An image always gets `grid_size ** 2` codes.
            min_new_codes (`int`, defaults to 1): audio only: the end code is not allowed before this many codes.
            use_cache (`bool`, defaults to `True`): reuse the self-attention keys/values of earlier steps (the same
                result as recomputing everything, faster).
            generate_kwargs: further `GenerationMixin.generate` settings (`num_beams`, `prompt_lookup_num_tokens`,
                `return_dict_in_generate`, `output_scores`, `output_attentions`, ...).

        Only real codes (ids `< codebook_size`, and for audio the end code) are ever chosen: BOS and PAD are
        suppressed, so the codes always index the tokenizer's codebook.

        Returns:
            [`OptTriCodeGenerationOutput`] with `codes`, `codes_mask` and the raw `sequences`.
        """
        _check_sampling_arguments(temperature, top_k, top_p, seed, num_return_sequences)
        _check_code_generate_arguments(generate_kwargs)
        steps, min_new_codes = self._code_budget(max_new_codes, min_new_codes)
        if encoder_hidden_states is None:
            encoder_hidden_states, encoder_states_mask = self.encode(
                input_ids, attention_mask, token_type_ids, pixel_values, image_mask, input_features, audio_attention_mask
            )
        encoder_states_mask = _states_mask(encoder_hidden_states, encoder_states_mask)
        settings = self._generation_settings(do_sample, temperature, top_k, top_p, steps, min_new_codes, use_cache)
        settings.update(generate_kwargs)
        # greedy/beam search give one answer per input: `num_return_sequences` copies of it
        copies = num_return_sequences if not do_sample and settings.get("num_beams", 1) == 1 else 1
        settings["num_return_sequences"] = num_return_sequences // copies
        device = encoder_hidden_states.device
        start = torch.full((encoder_hidden_states.shape[0], 1), self.decoder_config.bos_token_id, device=device)
        with _private_rng(seed, device):
            out = super().generate(
                input_ids=start,
                attention_mask=torch.ones_like(start),
                encoder_hidden_states=encoder_hidden_states,
                encoder_states_mask=encoder_states_mask,
                **settings,
            )
        sequences = out if torch.is_tensor(out) else out.sequences
        return self._codes_output(sequences.repeat_interleave(copies, dim=0), None if torch.is_tensor(out) else out)

    def _codes_output(self, sequences: torch.Tensor, generate_output) -> OptTriCodeGenerationOutput:
        """Codes and code mask of the generated decoder ids `sequences` `(B', 1 + steps)`."""
        dc = self.decoder_config
        generated = sequences[:, 1:]
        codes_mask = (generated < dc.codebook_size).long()
        codes = generated.masked_fill(codes_mask == 0, 0)
        if self.modality == "image":
            codes = codes.view(-1, dc.grid_size, dc.grid_size)
            codes_mask = codes_mask.view(-1, dc.grid_size, dc.grid_size)
        else:  # as wide as the longest clip (the end code is not a code)
            width = int(codes_mask.sum(-1).max())
            codes, codes_mask = codes[:, :width], codes_mask[:, :width]
        return OptTriCodeGenerationOutput(
            codes=codes, codes_mask=codes_mask, sequences=sequences, generate_output=generate_output
        )

    def _code_budget(self, max_new_codes, min_new_codes) -> tuple[int, int]:
        """`(steps, min_new_codes)` of one `generate` call: every code of an image; for audio at most `max_new_codes`
        (default `num_codes`) codes, the end code allowed after `min_new_codes`."""
        dc = self.decoder_config
        if self.modality == "image":
            if max_new_codes not in (None, dc.num_codes):
                raise ValueError(f"An image always has {dc.num_codes} codes; max_new_codes={max_new_codes} is not allowed")
            return dc.num_codes, dc.num_codes
        steps = dc.num_codes if max_new_codes is None else max_new_codes
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= dc.max_position_embeddings - 1:
            raise ValueError(
                f"max_new_codes must be an int in [1, {dc.max_position_embeddings - 1}] (audio_decoder_config."
                f"max_position_embeddings - 1), got {max_new_codes!r}"
            )
        if isinstance(min_new_codes, bool) or not isinstance(min_new_codes, int) or not 0 <= min_new_codes <= steps:
            raise ValueError(f"min_new_codes must be an int in [0, {steps}], got {min_new_codes!r}")
        return steps, min_new_codes

    def _generation_settings(self, do_sample, temperature, top_k, top_p, steps, min_new_codes, use_cache) -> dict:
        """The `GenerationMixin.generate` settings of a code decoder: BOS and PAD (and for images the end code) are
        never generated, so every code indexes the tokenizer's codebook."""
        dc = self.decoder_config
        is_audio = self.modality == "audio"
        settings = dict(
            bos_token_id=dc.bos_token_id,
            eos_token_id=dc.eos_token_id if is_audio else None,
            pad_token_id=dc.pad_token_id,
            suppress_tokens=[dc.bos_token_id, dc.pad_token_id] + ([] if is_audio else [dc.eos_token_id]),
            max_new_tokens=steps,
            min_new_tokens=min_new_codes if is_audio else None,
            do_sample=do_sample,
            use_cache=use_cache,
        )
        if do_sample:
            settings.update(temperature=float(temperature), top_k=top_k, top_p=float(top_p))
        if use_cache:  # GenerationMixin would size its cache from the text decoder's config
            settings["cache"] = DynamicCache(config=dc)
        return settings

    def _check_tokenizer(self, tokenizer, kind: str) -> None:
        """Raise unless `tokenizer` is a VQ tokenizer of `kind` ("image"/"audio") with this decoder's codebook."""
        dc = self.decoder_config
        needed = ("decode", "to_pil") if kind == "image" else ("decode_waveform",)
        tokenizer_config = getattr(tokenizer, "config", None)
        if tokenizer_config is None or not all(hasattr(tokenizer, name) for name in needed):
            raise TypeError(
                f"Expected an OptTri{kind.capitalize()}VQModel as the {kind} tokenizer, got {type(tokenizer).__name__}"
            )
        size = getattr(tokenizer_config, "codebook_size", None)
        if size != dc.codebook_size:
            raise ValueError(
                f"The {kind} tokenizer has {size} codes but the {kind} decoder writes {dc.codebook_size} "
                f"({kind}_decoder_config.codebook_size): use the tokenizer whose codes the decoder was trained on"
            )
        if kind == "image":
            grid = tokenizer_config.image_size // tokenizer_config.downsample
            if grid != dc.grid_size:
                raise ValueError(
                    f"The image tokenizer makes a {grid} x {grid} code grid (image_size {tokenizer_config.image_size} / "
                    f"downsample {tokenizer_config.downsample}) but the decoder writes {dc.grid_size} x {dc.grid_size}"
                )
