"""Model-family registry: where each family keeps its layer stack and which module plays each ROLE.

Heterogeneous federations mix BERT-, MPNet-, Llama- and GPT-2-style backbones. Everything the rest of the
package needs to know about a family (the attribute path of the transformer layer stack, the module that plays
each role q k v o gate up down, how a layer returns its output, where the config keeps its sizes) lives here,
so no other module branches on a family.

Roles are the family-neutral names of a layer's linear projections: ``q``, ``k``, ``v``, ``o`` (attention) and
``gate``, ``up``, ``down`` (MLP). BERT and MPNet have no ``gate``. GPT-2 fuses q, k and v into one ``Conv1D``
(``attn.c_attn``): the roles ``q``, ``k`` and ``v`` all map to it, so targeting any of them adapts the fused
projection (the standard GPT-2 LoRA recipe), and targeting several of them adapts it once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

ROLES: tuple[str, ...] = ("q", "k", "v", "o", "gate", "up", "down")
ALL_LINEAR = "all-linear"
DEFAULT_ROLES: tuple[str, ...] = ("q", "v")


@dataclass(frozen=True)
class ModelDims:
    """The sizes that fix every adapter shape, read from a Hugging Face config (no model is built).

    Parameters
    ----------
    model_type : str
        The Hugging Face ``model_type`` (a registered family), which says which module plays each role.
    hidden_size : int
        Width d of the hidden states.
    intermediate_size : int
        Width of the MLP's inner projection.
    num_layers : int
        Depth of the full model.
    num_heads, num_kv_heads, head_dim : int
        Attention heads, key/value heads (fewer under grouped-query attention) and the width of one head.
    """

    model_type: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | Any) -> ModelDims:
        """Read the fields from a mapping or an object with these attributes (e.g. a ``ClientInfo``)."""
        get = values.get if isinstance(values, Mapping) else lambda key: getattr(values, key)
        sizes = {name: int(get(name)) for name in cls.__dataclass_fields__ if name != "model_type"}
        return cls(model_type=str(get("model_type")), **sizes)


@dataclass(frozen=True)
class FamilySpec:
    """How one transformer family is laid out inside a Hugging Face ``AutoModel``.

    Parameters
    ----------
    name : str
        Registry key, equal to the Hugging Face ``config.model_type`` it serves.
    layer_stack : str
        Dotted attribute path from the base model to its ``nn.ModuleList`` of layers.
    role_paths : tuple[tuple[str, str], ...]
        ``(role, path)`` pairs: the path, relative to one layer, of the linear projection that plays each role.
        A role the family lacks (BERT's ``gate``) is absent.
    layer_returns_tuple : bool
        True where a layer returns ``(hidden_states, ...)`` rather than a bare tensor.
    depth_attribute : str (default: "num_hidden_layers")
        Config attribute that holds the number of layers.
    fused_qkv : bool (default: False)
        True where one projection computes q, k and v together (GPT-2's ``c_attn``, output width 3 d).
    """

    name: str
    layer_stack: str
    role_paths: tuple[tuple[str, str], ...]
    layer_returns_tuple: bool = False
    depth_attribute: str = "num_hidden_layers"
    fused_qkv: bool = False

    @property
    def roles(self) -> tuple[str, ...]:
        """The roles this family has, in the canonical order of :data:`ROLES`."""
        return tuple(role for role, _ in self.role_paths)

    def module_path(self, role: str) -> str:
        """The path of the projection that plays ``role`` in one layer.

        Raises
        ------
        ValueError
            If ``role`` is not a role at all, or this family has no such projection.
        """
        if role not in ROLES:
            raise ValueError(f"module role {role!r} is not one of {list(ROLES)} (or {ALL_LINEAR!r})")
        paths = dict(self.role_paths)
        if role not in paths:
            raise ValueError(f"model family {self.name!r} has no {role!r} projection (its roles: {list(self.roles)})")
        return paths[role]

    def module_paths(self, roles: Iterable[str]) -> tuple[str, ...]:
        """The distinct projection paths of ``roles`` (GPT-2's q, k and v share one), in layer order."""
        paths: list[str] = []
        for role in resolve_roles(roles, self):
            path = self.module_path(role)
            if path not in paths:
                paths.append(path)
        return tuple(paths)

    def in_out(self, role: str, dims: ModelDims) -> tuple[int, int]:
        """``(in_features, out_features)`` of the projection that plays ``role``, from the sizes alone."""
        self.module_path(role)
        d, attention = dims.hidden_size, dims.num_heads * dims.head_dim
        if self.fused_qkv and role in ("q", "k", "v"):
            return d, 3 * d
        shapes = {
            "q": (d, attention),
            "k": (d, dims.num_kv_heads * dims.head_dim),
            "v": (d, dims.num_kv_heads * dims.head_dim),
            "o": (attention, d),
            "gate": (d, dims.intermediate_size),
            "up": (d, dims.intermediate_size),
            "down": (dims.intermediate_size, d),
        }
        return shapes[role]

    def dims(self, config: Any) -> ModelDims:
        """The sizes of a Hugging Face config of this family (GPT-2's ``n_embd``/``n_inner`` included)."""
        hidden = int(_first(config, "hidden_size", "n_embd"))
        heads = int(_first(config, "num_attention_heads", "n_head"))
        intermediate = _first(config, "intermediate_size", "n_inner", default=None)
        head_dim = getattr(config, "head_dim", None)
        return ModelDims(
            model_type=self.name,
            hidden_size=hidden,
            # GPT-2 leaves n_inner unset and uses 4 d.
            intermediate_size=int(intermediate) if intermediate is not None else 4 * hidden,
            num_layers=int(getattr(config, self.depth_attribute)),
            num_heads=heads,
            num_kv_heads=int(getattr(config, "num_key_value_heads", None) or heads),
            head_dim=int(head_dim) if head_dim else hidden // heads,
        )


def model_dims(config: Any) -> ModelDims:
    """The sizes of a Hugging Face config of any registered family (a ``ModelDims`` passes through)."""
    if isinstance(config, ModelDims):
        return config
    return family_of(config.model_type).dims(config)


def resolve_roles(roles: Iterable[str] | str, family: FamilySpec | None = None) -> tuple[str, ...]:
    """Expand ``all-linear`` (every role of ``family``, or of :data:`ROLES` without a family) and check names.

    Raises
    ------
    ValueError
        If a name is not a role, or ``roles`` is empty.
    """
    if isinstance(roles, str):
        roles = (roles,)
    roles = tuple(roles)
    if ALL_LINEAR in roles:
        return family.roles if family is not None else ROLES
    if not roles:
        raise ValueError(f"module roles must not be empty (give some of {list(ROLES)} or {ALL_LINEAR!r})")
    unknown = [role for role in roles if role not in ROLES]
    if unknown:
        raise ValueError(f"module roles {unknown} are not among {list(ROLES)} (or {ALL_LINEAR!r})")
    return tuple(role for role in ROLES if role in roles)


def _first(config: Any, *names: str, **default: Any) -> Any:
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    if "default" in default:
        return default["default"]
    raise ValueError(f"config of {getattr(config, 'model_type', '?')!r} has none of {list(names)}")


_DECODER_ROLES = (
    ("q", "self_attn.q_proj"),
    ("k", "self_attn.k_proj"),
    ("v", "self_attn.v_proj"),
    ("o", "self_attn.o_proj"),
    ("gate", "mlp.gate_proj"),
    ("up", "mlp.up_proj"),
    ("down", "mlp.down_proj"),
)

_FAMILIES: dict[str, FamilySpec] = {
    spec.name: spec
    for spec in (
        FamilySpec(
            "bert",
            "encoder.layer",
            (
                ("q", "attention.self.query"),
                ("k", "attention.self.key"),
                ("v", "attention.self.value"),
                ("o", "attention.output.dense"),
                ("up", "intermediate.dense"),
                ("down", "output.dense"),
            ),
        ),
        FamilySpec(
            "mpnet",
            "encoder.layer",
            (
                ("q", "attention.attn.q"),
                ("k", "attention.attn.k"),
                ("v", "attention.attn.v"),
                ("o", "attention.attn.o"),
                ("up", "intermediate.dense"),
                ("down", "output.dense"),
            ),
            layer_returns_tuple=True,
        ),
        FamilySpec("llama", "layers", _DECODER_ROLES),
        FamilySpec("qwen2", "layers", _DECODER_ROLES),
        FamilySpec("gemma3_text", "layers", _DECODER_ROLES),
        # GPT-2 fuses q, k and v into one Conv1D (see the module docstring); c_proj is the attention output,
        # mlp.c_fc / mlp.c_proj the MLP's up and down projections. It has no gate.
        FamilySpec(
            "gpt2",
            "h",
            (
                ("q", "attn.c_attn"),
                ("k", "attn.c_attn"),
                ("v", "attn.c_attn"),
                ("o", "attn.c_proj"),
                ("up", "mlp.c_fc"),
                ("down", "mlp.c_proj"),
            ),
            depth_attribute="n_layer",
            fused_qkv=True,
        ),
    )
}

FAMILIES: Mapping[str, FamilySpec] = MappingProxyType(_FAMILIES)


def family_of(model_type: str) -> FamilySpec:
    """Return the registered family of a Hugging Face ``model_type``.

    Raises
    ------
    ValueError
        If the family is not registered; the message lists the known families.
    """
    try:
        return FAMILIES[model_type]
    except KeyError:
        known = ", ".join(sorted(FAMILIES))
        raise ValueError(f"model family {model_type!r} is not supported (known: {known})") from None
