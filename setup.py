"""The build's one part pyproject.toml can't declare: gateway.audit.speedups, compiled.

It is optional: where there is no C compiler or no OpenSSL headers (libssl-dev), the install
goes on without it and `audit verify` and `audit query` check the same lines in Python, about
twice as slowly (docs/performance.md).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "gateway.audit.speedups",
            sources=["gateway/audit/speedups.c"],
            libraries=["crypto"],
            extra_compile_args=["-O2"],
            optional=True,
        )
    ]
)
