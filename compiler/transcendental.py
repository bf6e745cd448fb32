"""exp, expm1, log and tanh as straight-line polynomial code, so loops that use them vectorise
(LLVM has no vector libm here: `llvm.exp` in a loop becomes one scalar libm call per lane).

exp: x = k ln2 + r with |r| <= ln2/2 (ln2 split in two parts for exactness), e^r - 1 by its Taylor
series (degree 7 for float32, 13 for float64: truncation below half an ulp), and 2^k built in the
exponent bits in two halves so that results down in the subnormals are right.
log: x = 2^e m with m in [sqrt(1/2), sqrt(2)), log m = 2 atanh(s), s = (m-1)/(m+1), odd series.
tanh: expm1(2|x|) / (expm1(2|x|) + 2) with the sign copied back; exact to a few ulp near 0.
Special values: exp(+-inf) = inf/0, log(0) = -inf, log(x<0) = NaN, NaN propagates."""
import math

from llvmlite import ir

_F32 = dict(bits=32, mant=23, bias=127, taylor=7, log_terms=6, ln2_hi=0.693359375,
            ln2_lo=-2.12194440e-4, exp_hi=88.72283935546875, exp_lo=-103.97208404541016,
            tanh_big=9.1, min_normal=2.0 ** -126, subnormal_scale=24)
_F64 = dict(bits=64, mant=52, bias=1023, taylor=13, log_terms=11, ln2_hi=6.93147180369123816490e-01,
            ln2_lo=1.90821492927058770002e-10, exp_hi=709.782712893384, exp_lo=-745.1332191019412,
            tanh_big=19.1, min_normal=2.0 ** -1022, subnormal_scale=54)


def _params(ty):
    return _F64 if isinstance(ty, ir.DoubleType) else _F32


def _intrinsic(b, name, ty, nargs=1):
    mod = b.module
    suffix = "f64" if isinstance(ty, ir.DoubleType) else "f32"
    full = f"llvm.{name}.{suffix}"
    if full in mod.globals:
        return mod.globals[full]
    return ir.Function(mod, ir.FunctionType(ty, [ty] * nargs), name=full)


def call(b, name, ty, *args):
    return b.call(_intrinsic(b, name, ty, len(args)), list(args))


FLAGS = ("contract",)


def _c(ty, v):
    return ir.Constant(ty, float(v))


def _horner(b, x, coeffs, ty):
    """coeffs[0] + x*(coeffs[1] + x*(...)), highest degree last."""
    acc = _c(ty, coeffs[-1])
    for c in reversed(coeffs[:-1]):
        acc = b.fadd(b.fmul(acc, x, flags=FLAGS), _c(ty, c), flags=FLAGS)
    return acc


def _ldexp(b, v, k, ty):
    """v * 2^k for integer-valued float k in a safe range, in two halves (k may reach the
    subnormal range, where a single exponent field cannot hold 2^k)."""
    p = _params(ty)
    ity = ir.IntType(p["bits"])
    ki = b.fptosi(k, ity)
    k1 = b.ashr(ki, ity(1))
    k2 = b.sub(ki, k1)

    def pow2(e):
        return b.bitcast(b.shl(b.add(e, ity(p["bias"])), ity(p["mant"])), ty)
    return b.fmul(b.fmul(v, pow2(k1)), pow2(k2))


def _exp_parts(b, x, ty):
    """(k, q) with e^x = 2^k (1 + q), |q| < 0.42, k clamped so 2^k stays constructible."""
    p = _params(ty)
    xc = call(b, "minnum", ty, call(b, "maxnum", ty, x, _c(ty, p["exp_lo"])), _c(ty, p["exp_hi"]))
    k = call(b, "rint", ty, b.fmul(xc, _c(ty, 1 / math.log(2))))
    r = b.fsub(x, b.fmul(k, _c(ty, p["ln2_hi"])))
    r = b.fsub(r, b.fmul(k, _c(ty, p["ln2_lo"])))
    coeffs = [1.0 / math.factorial(n) for n in range(1, p["taylor"] + 1)]
    q = b.fmul(r, _horner(b, r, coeffs, ty), flags=FLAGS)
    return k, q


def exp(b, x, ty):
    p = _params(ty)
    k, q = _exp_parts(b, x, ty)
    y = _ldexp(b, b.fadd(q, _c(ty, 1.0)), k, ty)
    y = b.select(b.fcmp_ordered(">", x, _c(ty, p["exp_hi"])), _c(ty, math.inf), y)
    return b.select(b.fcmp_ordered("<", x, _c(ty, p["exp_lo"])), _c(ty, 0.0), y)


def expm1(b, x, ty):
    p = _params(ty)
    k, q = _exp_parts(b, x, ty)
    big = b.fsub(_ldexp(b, b.fadd(q, _c(ty, 1.0)), k, ty), _c(ty, 1.0))
    y = b.select(b.fcmp_ordered("==", k, _c(ty, 0.0)), q, big)
    y = b.select(b.fcmp_ordered(">", x, _c(ty, p["exp_hi"])), _c(ty, math.inf), y)
    return b.select(b.fcmp_ordered("<", x, _c(ty, p["exp_lo"])), _c(ty, -1.0), y)


def log(b, x, ty):
    p = _params(ty)
    ity = ir.IntType(p["bits"])
    tiny = b.fcmp_ordered("<", x, _c(ty, p["min_normal"]))
    xs = b.select(tiny, b.fmul(x, _c(ty, 2.0 ** p["subnormal_scale"])), x)
    bits = b.bitcast(xs, ity)
    e = b.sub(b.lshr(bits, ity(p["mant"])), ity(p["bias"]))
    mant_mask = (1 << p["mant"]) - 1
    m = b.bitcast(b.or_(b.and_(bits, ity(mant_mask)), ity(p["bias"] << p["mant"])), ty)
    ef = b.sitofp(e, ty)
    ef = b.select(tiny, b.fsub(ef, _c(ty, p["subnormal_scale"])), ef)
    high = b.fcmp_ordered(">", m, _c(ty, math.sqrt(2.0)))
    m = b.select(high, b.fmul(m, _c(ty, 0.5)), m)
    ef = b.select(high, b.fadd(ef, _c(ty, 1.0)), ef)
    f = b.fsub(m, _c(ty, 1.0))
    s = b.fdiv(f, b.fadd(f, _c(ty, 2.0)))
    z = b.fmul(s, s)
    series = _horner(b, z, [2.0 / (2 * n + 1) for n in range(p["log_terms"])], ty)
    logm = b.fmul(s, series, flags=FLAGS)
    y = b.fadd(b.fmul(ef, _c(ty, p["ln2_hi"])), b.fadd(logm, b.fmul(ef, _c(ty, p["ln2_lo"]))))
    y = b.select(b.fcmp_ordered("==", x, _c(ty, math.inf)), x, y)
    y = b.select(b.fcmp_ordered("==", x, _c(ty, 0.0)), _c(ty, -math.inf), y)
    y = b.select(b.fcmp_ordered("<", x, _c(ty, 0.0)), _c(ty, math.nan), y)
    return b.select(b.fcmp_unordered("uno", x, x), x, y)


def tanh(b, x, ty):
    p = _params(ty)
    a = call(b, "fabs", ty, x)
    t = expm1(b, b.fmul(a, _c(ty, 2.0)), ty)
    y = b.fdiv(t, b.fadd(t, _c(ty, 2.0)))
    y = b.select(b.fcmp_ordered(">", a, _c(ty, p["tanh_big"])), _c(ty, 1.0), y)
    return call(b, "copysign", ty, y, x)
