"Every public function documents each parameter on that parameter's own line, so `fastcore.docments` reads it right."
import ast, importlib, inspect, pkgutil, textwrap
import pytest
from fastcore.docments import docments
import sarlang_nb

SKIP_PARAMS = {"self", "cls"}

def _modules():
    return sorted(m.name for m in pkgutil.iter_modules(sarlang_nb.__path__) if not m.name.startswith("_"))

def _public_functions(mod):
    "(qualified name, function) for the module's public functions and its public classes' own methods."
    for name in getattr(mod, "__all__", []):
        obj = getattr(mod, name, None)
        if inspect.isfunction(obj) and obj.__module__ == mod.__name__: yield name, obj
        elif inspect.isclass(obj) and obj.__module__ == mod.__name__:
            for k, v in vars(obj).items():
                f = v.fget if isinstance(v, property) else getattr(v, "__func__", v)
                if inspect.isfunction(f) and (not k.startswith("_") or k == "__init__") and f.__module__ == mod.__name__:
                    yield f"{name}.{k}", f

def _params(fn):
    "[(parameter, its source line)] from the function's own source."
    try: src = textwrap.dedent(inspect.getsource(fn))
    except (OSError, TypeError): return None
    node = ast.parse(src).body[0]
    while not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)): return None
    a = node.args
    args = [*a.posonlyargs, *a.args, *([a.vararg] if a.vararg else []), *a.kwonlyargs, *([a.kwarg] if a.kwarg else [])]
    return [(x.arg, x.lineno) for x in args if x.arg not in SKIP_PARAMS]

def problems(fn):
    "What is wrong with `fn`'s docments: parameters sharing a line, parameters without a comment."
    ps = _params(fn)
    if not ps: return []
    out, lines = [], {}
    for p, ln in ps: lines.setdefault(ln, []).append(p)
    if len(ps) > 1: out += [f"{', '.join(v)} share one line" for v in lines.values() if len(v) > 1]
    d = docments(fn, args_kwargs=True)   # *args and **kwargs too
    out += [f"{p}: no comment" for p, _ in ps if not d.get(p)]
    return out

@pytest.mark.parametrize("modname", _modules())
def test_docments_one_parameter_per_line(modname):
    mod = importlib.import_module(f"sarlang_nb.{modname}")
    bad = {q: pr for q, fn in _public_functions(mod) if (pr := problems(fn))}
    assert not bad, f"{len(bad)} public function(s) of sarlang_nb.{modname}:\n" + "\n".join(f"  {q}: {'; '.join(p)}" for q, p in sorted(bad.items()))

def test_the_check_itself():
    def good(a:int, # what a is
             b=None): # what b is
        "ok"
    def packed(a, b): # a; b
        "two on one line"
    def silent(a,
               b): # only b
        "a has no comment"
    assert problems(good) == []
    assert problems(packed) == ["a, b share one line", "a: no comment"]
    assert problems(silent) == ["a: no comment"]
