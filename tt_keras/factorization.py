"""Prime factors and divisors of row counts up to 2^62, for the shape suggestions.

Pure Python (no NumPy, no TF). Trial division alone takes minutes for a 62-bit number with
two large prime factors (about 10^9 candidate divisors); Miller-Rabin with fixed bases, exact
for every n below 3.3 * 10^24, and Pollard's rho in Brent's form factor any such number in
milliseconds.
"""

import math

__all__ = ["divisors", "is_prime", "prime_factors"]

# Miller-Rabin with these bases has no pseudoprime below 3.3 * 10^24 (Sorenson and Webster,
# 2015), far above 2^62; they double as the trial divisors.
_BASES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37)


def is_prime(n: int) -> bool:
    """Whether n is prime (exact for n < 3.3 * 10^24)."""
    if n < 2:
        return False
    for p in _BASES:
        if n % p == 0:
            return n == p
    d, s = n - 1, 0
    while d % 2 == 0:
        d //= 2
        s += 1
    for a in _BASES:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def _rho_factor(n: int) -> int:
    """A non-trivial factor of the odd composite n (Pollard's rho, Brent's cycle finding,
    gcds batched over 128 steps). Deterministic: the polynomial x^2 + c is tried for
    c = 1, 2, ... until one splits n."""
    c = 0
    while True:
        c += 1
        y, power, product, factor = 2, 1, 1, 1
        x = saved = y
        while factor == 1:
            x = y
            for _ in range(power):
                y = (y * y + c) % n
            done = 0
            while done < power and factor == 1:
                saved = y
                for _ in range(min(128, power - done)):
                    y = (y * y + c) % n
                    product = product * abs(x - y) % n
                factor = math.gcd(product, n)
                done += 128
            power *= 2
        if factor == n:  # the batch overshot: replay it one step at a time
            factor = 1
            while factor == 1:
                saved = (saved * saved + c) % n
                factor = math.gcd(abs(x - saved), n)
        if factor != n:
            return factor


def prime_factors(n: int) -> dict:
    """The prime factorisation of n >= 1 as {prime: exponent}."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    factors = {}
    for p in _BASES:
        while n % p == 0:
            factors[p] = factors.get(p, 0) + 1
            n //= p
    pending = [n] if n > 1 else []
    while pending:
        m = pending.pop()
        if is_prime(m):
            factors[m] = factors.get(m, 0) + 1
            continue
        d = _rho_factor(m)
        pending += [d, m // d]
    return dict(sorted(factors.items()))


def divisors(n: int) -> list:
    """All divisors of n >= 1, ascending."""
    divs = [1]
    for p, e in prime_factors(n).items():
        divs = [d * p**i for d in divs for i in range(e + 1)]
    return sorted(divs)
