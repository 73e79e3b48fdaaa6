"""Every field of every section of every run config is read by the package, through its own section.

A field nothing reads is accepted from YAML or an override and silently ignored. Matching field
names alone is not enough: ``rlvr.beta`` would count as read because ``cfg.dpo.beta`` is. So the
package is read with ``ast`` and a field counts only where code reads it from something that holds
*its* section (:func:`unread_fields`):

* ``<expr>.<section>.<field>``: ``cfg.rlvr.beta``, ``self.cfg.rlvr.beta``;
* an alias of a section: ``rl = cfg.rlvr`` then ``rl.beta`` (also ``self.rl = cfg.rlvr`` then
  ``self.rl.beta`` in any method of that class);
* a parameter annotated with the section's type (``parallel: ParallelConfig`` then
  ``parallel.tp``), a dataclass field of that type (``parallel: ParallelConfig`` in a class body
  then ``<expr>.parallel.tp``), or a call's result whose function is annotated to return it;
* a parameter that call sites pass a section to (``scoring_options(cfg.rlvr)`` makes ``rl`` in
  ``def scoring_options(rl)`` hold ``rlvr``), matched by function name;
* ``getattr(<holder>, "<field>", ...)``, and the dotted path ``"<section>.<field>"`` as a whole
  string literal (the estimator options that ``losses.estimators.config_value`` reads).

Fields read in ways no rule can follow are in :data:`READ_DYNAMICALLY`, each with where and how.
"""

from __future__ import annotations

import ast
import dataclasses
import typing
from collections import defaultdict
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from megatron_tulu.config.schema import DPORunConfig, RLVRRunConfig, SFTRunConfig
from megatron_tulu.engine.optimizer import MCORE_NAMED_FIELDS

PACKAGE = Path(__file__).resolve().parents[2] / "megatron_tulu"
RUN_CONFIGS = (SFTRunConfig, DPORunConfig, RLVRRunConfig)  # the pipeline runs these three

# Fields no rule above sees read, each with where and how it is read (checked to be still unseen:
# an entry the rules come to see must leave the list).

READ_DYNAMICALLY = {
    # Trainer's epochs and finish: getattr(self.cfg, self.name).epochs / .export_hf, the section
    # named like the trainer (sft or dpo; the RL trainer reads cfg.rlvr.export_hf itself)
    "sft.epochs",
    "dpo.epochs",
    "sft.export_hf",
    "dpo.export_hf",
    # the label of a parallel preset (`name:` in hydra_conf/parallel/*.yaml): only recorded, with
    # the whole config, in the run's config.json (algorithms/loop.py: asdict(cfg))
    "parallel.name",
}
# build_optimizer passes the optimizer fields Megatron's OptimizerConfig names the same, as
# getattr(opt, name) over engine/optimizer.py's list (taken from the code, so it cannot go stale)
READ_BY_NAME = {f"optimizer.{name}" for name in MCORE_NAMED_FIELDS}


def sections(run_configs=RUN_CONFIGS) -> dict[str, type]:
    """Section attribute name -> its dataclass, over ``run_configs`` (``model``, ``rlvr``, ...)."""
    out: dict[str, type] = {}
    for run in run_configs:
        for name, hint in typing.get_type_hints(run).items():
            if dataclasses.is_dataclass(hint):
                assert out.setdefault(name, hint) is hint, f"{name} has two types"
    return out


def _dotted(node: ast.AST) -> str | None:
    """``a.b.c`` of a Name/Attribute chain, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return ".".join([node.id, *reversed(parts)])
    return None


def _callee(call: ast.Call) -> str | None:
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None


def _type_names(annotation: ast.AST | None) -> set[str]:
    """Every class name an annotation mentions (``X``, ``mod.X``, ``X | None``, ``"X"``)."""
    names: set[str] = set()
    for node in ast.walk(annotation) if annotation is not None else ():
        if isinstance(node, ast.Name):
            names.add(node.id)
        elif isinstance(node, ast.Attribute):
            names.add(node.attr)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            try:
                names |= _type_names(ast.parse(node.value, mode="eval"))
            except SyntaxError:
                pass
    return names


def _params(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> list[ast.arg]:
    return [*fn.args.posonlyargs, *fn.args.args, *fn.args.kwonlyargs]


class _Scope:
    """A module, class or function: its holders (dotted name -> section) and its enclosing scope."""

    def __init__(self, parent: _Scope | None, cls: str | None = None):
        self.parent, self.cls = parent, cls
        self.holders: dict[str, str] = {}

    def lookup(self, dotted: str) -> str | None:
        scope: _Scope | None = self
        while scope is not None:
            if dotted in scope.holders:
                return scope.holders[dotted]
            scope = scope.parent
        return None


class _Analysis:
    def __init__(self, trees: Mapping[str, ast.Module], section_types: Mapping[str, type]):
        self.trees = trees
        self.by_type = {cls.__name__: name for name, cls in section_types.items()}
        self.fields = {name: {f.name for f in dataclasses.fields(cls)} for name, cls in section_types.items()}
        # attribute names that hold a section: the run configs' own, then dataclass fields typed with one
        self.attr_sections: dict[str, str] = {name: name for name in section_types}
        self.returns: dict[str, str] = {}  # function name -> section it is annotated to return
        self.passed: dict[str, dict[int | str, str]] = defaultdict(dict)  # function -> arg -> section
        self.class_holders: dict[tuple[str, str], dict[str, str]] = defaultdict(dict)  # (module, class)
        self.read: set[str] = set()

    def section_of(self, node: ast.AST, scope: _Scope) -> str | None:
        dotted = _dotted(node)
        if dotted is not None and (found := scope.lookup(dotted)):
            return found
        if isinstance(node, ast.Attribute) and self.attr_sections.get(node.attr):
            return self.attr_sections[node.attr]
        if isinstance(node, ast.Call):
            return self.returns.get(_callee(node) or "")
        if isinstance(node, ast.IfExp):
            body, orelse = self.section_of(node.body, scope), self.section_of(node.orelse, scope)
            return body if body == orelse else None
        return None

    def _section_of_type(self, annotation: ast.AST | None) -> str | None:
        found = {self.by_type[n] for n in _type_names(annotation) if n in self.by_type}
        return found.pop() if len(found) == 1 else None

    def collect(self) -> None:
        """Holders, returns and call-site bindings, to a fixed point; then the reads."""
        for _ in range(20):
            before = self._bindings()
            for module, tree in self.trees.items():
                self._visit(tree.body, _Scope(None), module, record_reads=False)
            if self._bindings() == before:
                break
        for module, tree in self.trees.items():
            self._visit(tree.body, _Scope(None), module, record_reads=True)

    def _bindings(self) -> tuple:
        return (
            {k: dict(v) for k, v in self.passed.items()},
            dict(self.returns),
            {k: dict(v) for k, v in self.class_holders.items()},
            dict(self.attr_sections),
        )

    def _visit(self, body: list[ast.stmt], scope: _Scope, module: str, record_reads: bool) -> None:
        # holders from assignments first (any order within the scope), then nested scopes and reads
        for stmt in body:
            for node in self._walk_scope(stmt):
                self._bind(node, scope, module)
        for stmt in body:
            for node in self._walk_scope(stmt):
                if isinstance(node, ast.ClassDef):
                    inner = _Scope(scope, cls=node.name)
                    inner.holders.update(self.class_holders[(module, node.name)])
                    for item in node.body:  # dataclass fields typed with a section
                        if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                            section = self._section_of_type(item.annotation)
                            if section and item.target.id not in self.attr_sections:
                                self.attr_sections[item.target.id] = section
                    self._visit(node.body, inner, module, record_reads)
                elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    self._visit_function(node, scope, module, record_reads)
                elif isinstance(node, ast.Call):
                    self._call(node, scope)
                    if record_reads:
                        self._getattr_read(node, scope)
                elif record_reads and isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
                    section = self.section_of(node.value, scope)
                    if section and node.attr in self.fields[section]:
                        self.read.add(f"{section}.{node.attr}")
                elif record_reads and isinstance(node, ast.Constant) and isinstance(node.value, str):
                    section, _, name = node.value.partition(".")
                    if name in self.fields.get(section, ()):
                        self.read.add(node.value)

    def _walk_scope(self, node: ast.AST) -> Iterator[ast.AST]:
        """``node`` and what it contains, not entering nested functions and classes (yielded)."""
        yield node
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            return
        for child in ast.iter_child_nodes(node):
            yield from self._walk_scope(child)

    def _visit_function(self, fn, scope: _Scope, module: str, record_reads: bool) -> None:
        inner = _Scope(scope)
        params = _params(fn)
        method = scope.cls is not None and bool(fn.args.args) and fn.args.args[0].arg in ("self", "cls")
        positional = [p.arg for p in [*fn.args.posonlyargs, *fn.args.args]][int(method) :]
        bound = self.passed.get(fn.name, {})
        for p in params:
            section = self._section_of_type(p.annotation) or bound.get(p.arg)
            if section is None and p.arg in positional:
                section = bound.get(positional.index(p.arg))
            if section:
                inner.holders[p.arg] = section
        returned = self._section_of_type(fn.returns)
        if returned:
            self.returns[fn.name] = returned
        for decorator in fn.decorator_list:
            self._visit([ast.Expr(decorator)], scope, module, record_reads)
        self._visit(fn.body, inner, module, record_reads)
        if scope.cls is not None:  # self.x = <section> in a method: every method of the class sees it
            for dotted, section in inner.holders.items():
                if dotted.startswith("self."):
                    self.class_holders[(module, scope.cls)][dotted] = section

    def _bind(self, node: ast.AST, scope: _Scope, module: str) -> None:
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        elif isinstance(node, ast.NamedExpr):
            targets, value = [node.target], node.value
        else:
            return
        for target in targets:
            if isinstance(target, ast.Tuple) and isinstance(value, ast.Tuple):  # a, rl = x, cfg.rlvr
                pairs = list(zip(target.elts, value.elts))
            else:
                pairs = [(target, value)]
            for one, its_value in pairs:
                dotted, section = _dotted(one), self.section_of(its_value, scope)
                if section and dotted:
                    scope.holders[dotted] = section

    def _call(self, call: ast.Call, scope: _Scope) -> None:
        name = _callee(call)
        if name is None:
            return
        for i, arg in enumerate(call.args):
            if section := self.section_of(arg, scope):
                self.passed[name][i] = section
        for kw in call.keywords:
            if kw.arg and (section := self.section_of(kw.value, scope)):
                self.passed[name][kw.arg] = section

    def _getattr_read(self, call: ast.Call, scope: _Scope) -> None:
        if _callee(call) in ("getattr", "hasattr") and len(call.args) >= 2:
            section = self.section_of(call.args[0], scope)
            field = call.args[1]
            if section and isinstance(field, ast.Constant) and field.value in self.fields[section]:
                self.read.add(f"{section}.{field.value}")


def unread_fields(sources: Mapping[str, str], section_types: Mapping[str, type]) -> list[str]:
    """``section.field`` of every field of ``section_types`` that no source reads through its section."""
    analysis = _Analysis({name: ast.parse(text, name) for name, text in sources.items()}, section_types)
    analysis.collect()
    every = [f"{section}.{f}" for section, names in analysis.fields.items() for f in sorted(names)]
    return [name for name in every if name not in analysis.read]


def package_sources() -> dict[str, str]:
    """Every module of the package but the schema (which defines the fields, it does not read them)."""
    return {
        str(p.relative_to(PACKAGE)): p.read_text()
        for p in sorted(PACKAGE.rglob("*.py"))
        if p.relative_to(PACKAGE) != Path("config/schema.py")
    }


def test_every_config_field_is_read_through_its_section():
    unread = unread_fields(package_sources(), sections())
    assert sorted(set(unread) - READ_DYNAMICALLY - READ_BY_NAME) == [], (
        "config fields nothing reads through their section"
    )
    assert sorted(READ_DYNAMICALLY - set(unread)) == [], "now seen as read: take them off READ_DYNAMICALLY"


def test_the_sections_cover_every_run_config():
    names = sections()
    assert {"model", "parallel", "precision", "optimizer", "checkpoint", "train", "data", "logging"} < set(
        names
    )
    assert {"sft", "dpo", "rlvr", "rollout"} < set(names)


# ------------------------------------------------------------------ the rules, on tiny sources


@dataclasses.dataclass
class _Opts:
    beta: float = 0.1
    gamma: float = 1.0


@dataclasses.dataclass
class DpoOpts(_Opts):
    pass


@dataclasses.dataclass
class RlOpts(_Opts):
    pass


TINY = {"dpo": DpoOpts, "rlvr": RlOpts}


def _unread(source: str) -> list[str]:
    return unread_fields({"m.py": source}, TINY)


def test_a_field_read_through_another_section_does_not_count():
    """The failure the name-only test had: ``cfg.dpo.beta`` made ``rlvr.beta`` look read."""
    assert _unread("def f(cfg):\n    return cfg.dpo.beta\n") == ["dpo.gamma", "rlvr.beta", "rlvr.gamma"]


@pytest.mark.parametrize(
    "source",
    [
        "def f(self):\n    return self.cfg.rlvr.beta\n",
        "def f(cfg):\n    rl = cfg.rlvr\n    return rl.beta\n",
        "def f(self):\n    cfg, rl = self.cfg, self.cfg.rlvr\n    return rl.beta\n",
        "class T:\n    def a(self, cfg):\n        self.rl = cfg.rlvr\n    def b(self):\n        return self.rl.beta\n",
        "def f(opts: RlOpts | None):\n    return opts.beta\n",
        "def g(rl):\n    return rl.beta\n\ndef f(cfg):\n    return g(cfg.rlvr)\n",
        "def g(x, *, rl):\n    return rl.beta\n\ndef f(cfg):\n    return g(1, rl=cfg.rlvr)\n",
        "def opts(cfg) -> RlOpts:\n    return cfg.rlvr\n\ndef f(cfg):\n    o = opts(cfg)\n    return o.beta\n",
        "def f(cfg):\n    return getattr(cfg.rlvr, 'beta', 0.0)\n",
        "OPTIONS = {'b': 'rlvr.beta'}\n",
        "@dataclass\nclass Job:\n    rl: RlOpts\n\ndef f(job):\n    return job.rl.beta\n",
    ],
)
def test_each_way_of_reading_a_section_counts(source):
    assert "rlvr.beta" not in _unread(source)
    assert "dpo.beta" in _unread(source)  # and only for its own section


def test_writes_and_other_objects_do_not_count():
    source = "def f(cfg, other):\n    cfg.rlvr.beta = 1\n    other.beta\n    return 'rlvr.beta is'\n"
    assert "rlvr.beta" in _unread(source)
