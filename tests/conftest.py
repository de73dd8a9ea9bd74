"""パッケージのテストの共通設定。

``xp`` フィクスチャは、NumPy・CuPy の厳しい代役（``tests/strict_cupy.py``、CPU で動き、ホストと
デバイスの配列を混ぜると失敗する）・（使える GPU があれば）本物の CuPy の 3 通りでテストを走らせます。
GPU の CI では ``MINI_DL_REQUIRE_GPU=1`` を設定し、GPU が見つからなければ失敗させます。
"""
import os

import numpy as np
import pytest

from mini_dl import cuda

REQUIRE_GPU = os.environ.get("MINI_DL_REQUIRE_GPU") == "1"


def pytest_configure(config):
    if REQUIRE_GPU and not cuda.is_available():
        raise pytest.UsageError("MINI_DL_REQUIRE_GPU=1 ですが、CuPy が使える GPU が見つかりません。")


_gpu_skips = []


def pytest_runtest_logreport(report):
    """GPU の CI（``MINI_DL_REQUIRE_GPU=1``）では、GPU のケースが飛ばされたら数えておき、最後に失敗にします。

    GPU のケースを飛ばすテストは、理由に「GPU がありません」と書く決まりです（``xp`` フィクスチャと同じ）。
    """
    if REQUIRE_GPU and report.skipped and "GPU がありません" in str(report.longrepr):
        _gpu_skips.append(report.nodeid)


def pytest_sessionfinish(session, exitstatus):
    if _gpu_skips:
        print(f"\nMINI_DL_REQUIRE_GPU=1 なのに、GPU のケースが {len(_gpu_skips)} 個飛ばされました:")
        for nodeid in _gpu_skips[:20]:
            print("  " + nodeid)
        session.exitstatus = 1


@pytest.fixture(params=["numpy", "strict", "cupy"])
def xp(request):
    """テストで使う配列モジュール（numpy・代役の strict_cupy・cupy）。

    ``strict`` のあいだは ``mini_dl.cuda`` が代役を CuPy として使うので、``cuda.as_cupy``・
    ``Variable.to_gpu()``・``DataLoader(gpu=True)`` も代役の配列を作ります。
    """
    if request.param == "numpy":
        yield np
    elif request.param == "strict":
        import strict_cupy

        with strict_cupy.install() as module:
            yield module
    else:
        if not cuda.is_available():
            pytest.skip("CuPy が使える GPU がありません")
        yield cuda.cupy
