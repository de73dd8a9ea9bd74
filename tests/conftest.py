"""パッケージのテストの共通設定。

``xp`` フィクスチャは NumPy と（使える GPU があれば）CuPy の両方でテストを走らせます。
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


@pytest.fixture(params=["numpy", "cupy"])
def xp(request):
    """テストで使う配列モジュール（numpy か cupy）。"""
    if request.param == "numpy":
        return np
    if not cuda.is_available():
        pytest.skip("CuPy が使える GPU がありません")
    return cuda.cupy
