"""GPT-2 in one file of plain PyTorch (no Hydra): read it top to bottom.

The default architecture is OpenAI's GPT-2: token + learned position embeddings, pre-LayerNorm
blocks of causal self-attention and a tanh-GELU MLP, a final LayerNorm, and an LM head tied to the
token embedding. Each of the "modern" changes that modded-nanogpt and nanochat use is one
GPTConfig field, independent of the others, whose default is GPT-2's choice (so the defaults give
the very same logits as before the options existed):

    pos_emb=rope        rotary position embeddings on queries and keys (rope_base), no wpe table
    norm=rmsnorm        RMSNorm instead of LayerNorm (torch.nn.RMSNorm)
    qk_norm=True        RMSNorm on each head's queries and keys before the dot product
    mlp=relu2           ReLU(x)^2 instead of GELU; mlp_ratio sets the hidden width (GPT-2: 4)
    tie_embeddings=False  an LM head of its own, zero-initialised
    logit_softcap=c     logits -> c * tanh(logits / c)
    bias=False          no biases in the linears and LayerNorms
    doc_mask=True       attention stays inside each document of a row, positions restart at each
                        one (forward's docs=document_ids(idx, separator); docs/modern.md)

`param=mup|completep` (with base_width, base_depth) changes how the weights are initialised,
scaled and trained as the model grows, not what it can compute: every rule is in
nanogpt/parametrization.py (docs/mup.md); `param=sp`, the default, is GPT-2's.

Attention goes through `F.scaled_dot_product_attention` (flash / memory-efficient kernels on
GPUs), except in bf16 on the CPU, where two batched matmuls are faster. Generation can use a
key/value cache (`KVCache`) so each new token costs one position of compute instead of the whole
context.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Optional

import torch
import torch.nn as nn
from torch.nn import functional as F

from nanogpt import parametrization

POS_EMBS = ("learned", "rope")
NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "relu2")
RMS_EPS = 1e-6  # RMSNorm's epsilon (LayerNorm keeps torch's and GPT-2's 1e-5)


def _choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name}={value!r}: use {' or '.join(choices)}")


@dataclass
class GPTConfig:
    """The model's architecture: every field is a `model.<field>` key of the config (nanogpt.config
    extends this class with where the weights and vocabulary come from), and a checkpoint's
    `model_args`. A new model option is one field here, read by the modules below (and values in
    tests/test_plan.py's OPTION_VALUES, which measure the memory plan with it)."""
    block_size: int = 1024
    vocab_size: int = 50257
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True  # biases in Linear and LayerNorm, as GPT-2; False is a bit faster and better
    # the modern options (module docstring); each default is GPT-2's choice
    pos_emb: str = "learned"  # learned (a table of block_size vectors) | rope (rotary)
    rope_base: float = 10000.0  # rotary: the longest wavelength is 2 pi rope_base positions
    norm: str = "layernorm"  # layernorm | rmsnorm
    qk_norm: bool = False  # RMSNorm on queries and keys (per head) before attention
    mlp: str = "gelu"  # gelu (tanh approximation, GPT-2) | relu2 (ReLU squared)
    mlp_ratio: float = 4.0  # MLP hidden width = round(mlp_ratio * n_embd)
    tie_embeddings: bool = True  # lm_head is wte (GPT-2); False: its own matrix, zero-initialised
    logit_softcap: Optional[float] = None  # None: raw logits; c: c * tanh(logits / c)
    # the parametrisation (nanogpt/parametrization.py, docs/mup.md): sp (GPT-2) | mup | completep
    param: str = "sp"
    base_width: Optional[int] = None  # mup, completep: the n_embd the hyperparameters were tuned at
    base_depth: Optional[int] = None  # completep: the n_layer the hyperparameters were tuned at
    # attention within each document of a row only, positions counted from its start: forward()
    # takes the rows' document ids (docs=document_ids(idx, separator)); without them, GPT-2's mask
    doc_mask: bool = False

    # fields that do not change the weights' shapes or meaning: a checkpoint resumes with another value
    NOT_ARCHITECTURE = ("dropout", "doc_mask")

    def __post_init__(self):
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if value is not None and value <= 0:  # None: the vocabulary is not known yet
                raise ValueError(f"{name} must be positive, got {value}")
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        _choice("pos_emb", self.pos_emb, POS_EMBS)
        _choice("norm", self.norm, NORMS)
        _choice("mlp", self.mlp, MLPS)
        head_size = self.n_embd // self.n_head
        if self.pos_emb == "rope" and head_size % 2:
            raise ValueError(f"pos_emb=rope needs an even head size, but n_embd / n_head = "
                             f"{self.n_embd} / {self.n_head} = {head_size}: rotary embeddings turn "
                             "pairs of features; change n_embd or n_head, or use pos_emb=learned")
        if not self.rope_base > 1.0:
            raise ValueError(f"rope_base must be > 1, got {self.rope_base}")
        if not self.mlp_ratio > 0 or self.mlp_hidden < 1:
            raise ValueError(f"mlp_ratio must give an MLP at least 1 wide, got mlp_ratio={self.mlp_ratio}")
        if self.logit_softcap is not None and not self.logit_softcap > 0:
            raise ValueError(f"logit_softcap must be null (off) or > 0, got {self.logit_softcap}")
        parametrization.check(self)

    @property
    def mlp_hidden(self) -> int:
        return round(self.mlp_ratio * self.n_embd)

    @classmethod
    def from_dict(cls, args: dict) -> "GPTConfig":
        """The config of a checkpoint's model_args (or any dict holding the fields): keys this
        version does not know are left out, fields the dict lacks (options added since it was
        written) keep their defaults, which are what the model computed before they existed."""
        names = {f.name for f in fields(GPTConfig)}
        return GPTConfig(**{k: v for k, v in args.items() if k in names})

    def architecture(self) -> dict:
        """The fields a checkpoint must agree on to load into this model."""
        return {f.name: getattr(self, f.name) for f in fields(GPTConfig) if f.name not in self.NOT_ARCHITECTURE}


def padded_vocab_size(vocab_size: int, multiple: int = 64) -> int:
    """Round the vocabulary up (50257 -> 50304): matmuls with a multiple of 64 are faster."""
    return ((vocab_size + multiple - 1) // multiple) * multiple


class KVCache:
    """Keys and values of every layer for the positions generated so far, preallocated at the
    first update in the dtype the keys come in unless `dtype` is given: the autocast dtype, or
    the weights' own where autocast leaves them alone (float64)."""

    def __init__(self, config: GPTConfig, batch_size: int, max_len: int, device, dtype=None):
        self.shape = (config.n_layer, batch_size, config.n_head, max_len, config.n_embd // config.n_head)
        self.device, self.dtype = device, dtype
        self.k = self.v = None
        self.pos = 0  # number of positions already stored

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Store k, v for the new positions of `layer`; return all keys and values so far."""
        if self.k is None:
            dtype = self.dtype or k.dtype
            self.k = torch.zeros(self.shape, device=self.device, dtype=dtype)
            self.v = torch.zeros(self.shape, device=self.device, dtype=dtype)
        t = k.size(2)
        self.k[layer, :, :, self.pos:self.pos + t] = k
        self.v[layer, :, :, self.pos:self.pos + t] = v
        end = self.pos + t
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0,
                     scale: float | None = None) -> torch.Tensor:
    """softmax(q k^T * scale + causal mask) v, over (B, n_head, T, head_size) tensors; scale None
    is 1 / sqrt(head_size) (GPT-2; μP passes its own, nanogpt.parametrization.attention_scale).

    SDPA picks a fused kernel: flash attention on GPUs, and on the CPU in float32. On the CPU in
    bfloat16 its flash kernel (the backward above all) is 1.5-5x slower than two batched matmuls
    for T <= 512, so there the math is written out (bench/cpu_train.py measures the difference);
    from T = 1024 on, flash wins again and does not hold T x T scores in memory."""
    B, H, T, D = q.shape
    if q.device.type == "cpu" and q.dtype == torch.bfloat16 and T <= 512:
        mask = torch.full((T, T), float("-inf"), dtype=q.dtype, device=q.device).triu(1)
        # scale, q k^T and the mask in one baddbmm; softmax accumulates in float32 internally
        att = torch.baddbmm(mask.expand(B * H, T, T), q.reshape(B * H, T, D),
                            k.reshape(B * H, T, D).transpose(1, 2),
                            alpha=1.0 / math.sqrt(D) if scale is None else scale)
        att = F.dropout(att.softmax(dim=-1), dropout_p) if dropout_p > 0 else att.softmax(dim=-1)
        return torch.bmm(att, v.reshape(B * H, T, D)).view(B, H, T, D)
    return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True, scale=scale)


def document_ids(idx: torch.Tensor, separator: int) -> torch.Tensor:
    """Each token's document in its row (B, T): the number of separators up to and including it,
    so a separator opens its document (as a BOS does) and a row's first, partial document is 0."""
    return (idx == separator).cumsum(dim=1)


def document_positions(docs: torch.Tensor) -> torch.Tensor:
    """Each token's position within its document (B, T): 0 at the first token of each document."""
    B, T = docs.shape
    index = torch.arange(T, device=docs.device).expand(B, T)
    opens = torch.ones_like(docs, dtype=torch.bool)
    opens[:, 1:] = docs[:, 1:] != docs[:, :-1]
    return index - torch.where(opens, index, 0).cummax(dim=1).values


def flex_attention_available(device: torch.device) -> bool:
    """FlexAttention (torch.nn.attention.flex_attention) on a CUDA device: the document mask as a
    block mask, whose fully masked blocks are skipped instead of computed."""
    if device.type != "cuda":
        return False
    try:
        from torch.nn.attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


_compiled_flex = None


def _flex_attention():
    """flex_attention compiled once (uncompiled it materialises the scores: slow and large)."""
    global _compiled_flex
    if _compiled_flex is None:
        from torch.nn.attention.flex_attention import flex_attention

        _compiled_flex = torch.compile(flex_attention, dynamic=False)
    return _compiled_flex


def document_mask(docs: torch.Tensor, flex: bool | None = None):
    """The causal mask that also keeps each query inside its document: a FlexAttention BlockMask
    on CUDA (flex=None: when available), else a boolean (B, 1, T, T) mask for SDPA (True: attend)."""
    B, T = docs.shape
    if flex is None:
        flex = flex_attention_available(docs.device)
    if flex:
        from torch.nn.attention.flex_attention import create_block_mask

        def same_document_causal(b, h, q, kv):
            return (q >= kv) & (docs[b, q] == docs[b, kv])

        return create_block_mask(same_document_causal, B, None, T, T, device=docs.device)
    causal = torch.ones(T, T, dtype=torch.bool, device=docs.device).tril()
    return (causal & (docs[:, :, None] == docs[:, None, :]))[:, None]


def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask, dropout_p: float = 0.0,
                     scale: float | None = None) -> torch.Tensor:
    """causal_attention under a document mask (document_mask): FlexAttention for a block mask
    (GPT.forward builds none when there is dropout to apply: FlexAttention has none), else SDPA."""
    if isinstance(mask, torch.Tensor):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale)
    return _flex_attention()(q, k, v, block_mask=mask, scale=scale)


class RMSNorm(nn.RMSNorm):
    """torch's RMSNorm (a gain, no mean, no bias), computed in its weight's dtype: under
    autocast the input can be bf16 beside a float32 gain, a mix torch's fused kernel refuses."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x.to(self.weight.dtype), self.normalized_shape, self.weight, self.eps).to(x.dtype)


def make_norm(config: GPTConfig, dim: int) -> nn.Module:
    """The model's normalisation: GPT-2's LayerNorm, or RMSNorm."""
    if config.norm == "rmsnorm":
        return RMSNorm(dim, eps=RMS_EPS)
    return nn.LayerNorm(dim, bias=config.bias)


def rotary_angles(positions: torch.Tensor, head_size: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (T, head_size / 2) of the rotary angles position * base^(-2i / head_size), or
    (B, T, head_size / 2) for positions (B, T) (within documents: GPT.forward's docs).
    Computed each forward (cheap: T x head_size / 2), in float32, so no buffer is needed."""
    exponent = torch.arange(0, head_size, 2, dtype=torch.float32, device=positions.device) / head_size
    angles = positions.to(torch.float32)[..., None] * base ** -exponent
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Turn each pair (x_i, x_{i + head_size/2}) of x (..., head_size) by its angle (cos and sin
    broadcast against x's leading dimensions): q.k then depends on the two positions only
    through their difference."""
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v at once
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.qk_norm = config.qk_norm
        self.scale = parametrization.attention_scale(config)  # None: 1 / sqrt(head_size)
        if config.qk_norm:  # RMSNorm gains of the queries and of the keys, shared by the heads
            self.q_gain = nn.Parameter(torch.ones(config.n_embd // config.n_head))
            self.k_gain = nn.Parameter(torch.ones(config.n_embd // config.n_head))

    def forward(self, x: torch.Tensor, cache: KVCache | None = None,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None, mask=None) -> torch.Tensor:
        B, T, C = x.size()
        if self.qk_norm or rope is not None:
            q, k, v = self._modern_qkv(x, rope)
        else:  # GPT-2
            q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
            # (B, T, C) -> (B, n_head, T, head_size)
            q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
            k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
            v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        if mask is not None:  # documents: nanogpt.model.document_mask
            y = masked_attention(q, k, v, mask, self.dropout if self.training else 0.0, self.scale)
        elif cache is None:
            y = causal_attention(q, k, v, self.dropout if self.training else 0.0, self.scale)
        else:
            past = cache.pos
            k, v = cache.update(self.layer_idx, k, v)
            if T == 1:  # one new query sees every cached position: no mask needed
                y = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
            else:  # a prompt: query i (at absolute position past + i) sees keys 0 .. past + i
                mask = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(diagonal=past)
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble the heads side by side
        return self.resid_dropout(self.c_proj(y))

    def _modern_qkv(self, x: torch.Tensor, rope):
        """q, k, v (B, n_head, T, head_size) with QK-norm and/or rotary embeddings, applied to the
        queries and keys together (one pass over both: on a CPU the op count is the cost)."""
        B, T, C = x.size()
        qkv = self.c_attn(x).view(B, T, 3, self.n_head, C // self.n_head)
        qk, v = qkv[:, :, :2], qkv[:, :, 2].transpose(1, 2)
        if self.qk_norm:
            gains = torch.stack((self.q_gain, self.k_gain))[:, None].to(qk.dtype)  # (2, 1, head_size)
            qk = F.rms_norm(qk, (qk.size(-1),), eps=RMS_EPS) * gains
        if rope is not None:  # the cache then stores keys already turned to their positions
            # (T, head_size / 2), or (B, T, ...) for positions within documents -> broadcast over (2, n_head)
            cos, sin = (a.unsqueeze(-2).unsqueeze(-2) for a in rope)
            qk = apply_rotary(qk, cos, sin)
        q, k = qk.permute(2, 0, 3, 1, 4).unbind(0)  # (2, B, n_head, T, head_size)
        return q, k, v


class ReLUSquared(nn.Module):
    """relu(x)^2 (Primer, So et al. 2021; modded-nanogpt): sparse, and cheaper than GELU."""

    def forward(self, x):
        return F.relu(x).square()


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, config.mlp_hidden, bias=config.bias)
        # GPT-2 used the tanh approximation of GELU
        self.act = nn.GELU(approximate="tanh") if config.mlp == "gelu" else ReLUSquared()
        self.c_proj = nn.Linear(config.mlp_hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.ln_1 = make_norm(config, config.n_embd)
        self.attn = CausalSelfAttention(config, layer_idx)
        self.ln_2 = make_norm(config, config.n_embd)
        self.mlp = MLP(config)
        self.branch = parametrization.branch_multiplier(config)  # CompleteP's 1 / depth multiplier

    def forward(self, x, cache: KVCache | None = None, rope=None, mask=None):
        if self.branch != 1.0:
            x = x + self.attn(self.ln_1(x), cache, rope, mask) * self.branch
            return x + self.mlp(self.ln_2(x)) * self.branch
        x = x + self.attn(self.ln_1(x), cache, rope, mask)
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        modules = dict(wte=nn.Embedding(config.vocab_size, config.n_embd))
        if config.pos_emb == "learned":
            modules["wpe"] = nn.Embedding(config.block_size, config.n_embd)
        self.transformer = nn.ModuleDict(dict(
            **modules,
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
            ln_f=make_norm(config, config.n_embd),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.transformer.wte.weight = self.lm_head.weight  # weight tying, as GPT-2
        hidden_std = parametrization.hidden_init_std(config)  # 0.02 under SP
        for name, module in self.named_modules():  # the order self.apply visits them: the same draws
            self._init_weights(module, hidden_std if name.startswith("transformer.h.") else 0.02)
        # GPT-2 scales the residual projections by 1/sqrt(2 * n_layer): each block adds two
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=parametrization.residual_init_std(config))
        if not config.tie_embeddings:  # modded-nanogpt: the first logits are uniform, loss ln(V)
            torch.nn.init.zeros_(self.lm_head.weight)

    @staticmethod
    def _init_weights(module, std: float = 0.02):
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count (a tied token embedding is counted once: it is the LM head).
        `non_embedding` leaves out the lookups, as the scaling-law papers do: the position
        embedding, and the token embedding when it is not also the head, so that it counts the
        parameters of the matmuls (and the small norm gains)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            if "wpe" in self.transformer:
                n -= self.transformer.wpe.weight.numel()
            if not self.config.tie_embeddings:
                n -= self.transformer.wte.weight.numel()
        return n

    def num_params_kaplan(self) -> int:
        """Kaplan et al.'s N: every parameter but the embeddings and the LM head, tied or not."""
        out = {id(p) for p in self.transformer.wte.parameters()} | {id(p) for p in self.lm_head.parameters()}
        if "wpe" in self.transformer:
            out.add(id(self.transformer.wpe.weight))
        return sum(p.numel() for p in self.parameters() if id(p) not in out)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                cache: KVCache | None = None, docs: torch.Tensor | None = None):
        """idx (B, T) token ids. With targets (B, T): logits for every position and the mean
        cross-entropy (targets of -1 are ignored). Without: logits of the last position only.
        docs (B, T), each token's document (document_ids), with config.doc_mask: attention stays
        inside each document and positions restart at each one, so a document's logits do not
        depend on what precedes it in its row. Ignored without doc_mask."""
        B, T = idx.size()
        start = cache.pos if cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of length {start + T} exceeds block_size {self.config.block_size}")
        mask = None
        if docs is not None and self.config.doc_mask and cache is None:
            flex = flex_attention_available(idx.device) and not (self.training and self.config.dropout > 0)
            mask = document_mask(docs, flex)
            pos = document_positions(docs)
        else:
            pos = torch.arange(start, start + T, dtype=torch.long, device=idx.device)
        x = self.transformer.wte(idx)
        rope = None
        if self.config.pos_emb == "learned":
            x = x + self.transformer.wpe(pos)
        else:
            rope = rotary_angles(pos, self.config.n_embd // self.config.n_head, self.config.rope_base)
        x = self.transformer.drop(x)
        for block in self.transformer.h:
            x = block(x, cache, rope, mask)
        if cache is not None:
            cache.pos += T
        x = self.transformer.ln_f(x)
        out_mult = parametrization.output_multiplier(self.config)
        if out_mult != 1.0:  # μP's 1 / width multiplier on the logits, applied to the head's input
            x = x * out_mult
        if targets is not None:
            logits = self.lm_head(x)
            # the loss in at least float32 (bf16/fp16 logits are upcast; float64 stays float64)
            logits_hi = logits.to(torch.promote_types(logits.dtype, torch.float32))
            if self.config.logit_softcap is not None:
                logits = logits_hi = self._softcap(logits_hi)
            loss = F.cross_entropy(logits_hi.view(-1, logits.size(-1)), targets.reshape(-1),
                                   ignore_index=-1)
            return logits, loss
        # inference: the last position's logits are all that generation needs
        logits = self.lm_head(x[:, [-1], :])
        if self.config.logit_softcap is not None:
            logits = self._softcap(logits.to(torch.promote_types(logits.dtype, torch.float32)))
        return logits, None

    def _softcap(self, logits: torch.Tensor) -> torch.Tensor:
        """Squash the logits smoothly into (-cap, cap) (Gemma 2, modded-nanogpt)."""
        cap = self.config.logit_softcap
        return cap * torch.tanh(logits / cap)

    def crop_block_size(self, block_size: int):
        """Shrink the context (e.g. load GPT-2's 1024 and train at 256)."""
        if block_size > self.config.block_size:
            raise ValueError(f"cannot grow block_size from {self.config.block_size} to {block_size}")
        self.config.block_size = block_size
        if "wpe" in self.transformer:
            self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight[:block_size])

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs per token (forward + backward), as in the PaLM paper (appendix B):
        6 * N for the matmuls with the weights, plus 12 * n_layer * n_embd * seq_len for attention
        (scores and weighted sum). N is num_params(non_embedding=True): the lookups (position
        table, an untied token embedding) are no matmuls; the LM head is one, tied or not. The
        element-wise work (norms, rotary, activation, soft-cap) is left out, as PaLM does."""
        cfg = self.config
        T = seq_len or cfg.block_size
        return 6 * self.num_params(non_embedding=True) + 12 * cfg.n_layer * cfg.n_embd * T

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, use_cache: bool = True,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Sample `max_new_tokens` tokens after the prompt idx (B, T); returns (B, T + new).

        With `use_cache`, each step feeds one token and reuses the cached keys/values, giving the
        same tokens as recomputing the context while prompt + output fit in block_size. Beyond that
        (position embeddings are absolute, so a cache cannot slide) the cache is rebuilt from the
        last block_size // 2 tokens, so the context always holds at least half a block."""
        was_training = self.training
        self.eval()
        block = self.config.block_size
        cache = None
        for _ in range(max_new_tokens):
            if use_cache:
                if cache is None or cache.pos >= block:
                    keep = block if cache is None else max(block // 2, 1)
                    cache = KVCache(self.config, idx.size(0), block, idx.device)
                    logits, _ = self(idx[:, -keep:], cache=cache)
                else:
                    logits, _ = self(idx[:, -1:], cache=cache)
            else:
                logits, _ = self(idx[:, -block:])
            logits = logits[:, -1, :].float() / max(temperature, 1e-8)
            if top_k is not None:
                v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                logits[logits < v[:, [-1]]] = -float("inf")
            probs = F.softmax(logits, dim=-1)
            idx_next = torch.multinomial(probs, num_samples=1, generator=generator)
            idx = torch.cat((idx, idx_next), dim=1)
        self.train(was_training)
        return idx
