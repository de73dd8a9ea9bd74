"""``pytest exercises/`` で練習問題を採点するための設定（中身は grader.py にあります）。"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # import grader（--import-mode に関係なく）
import grader  # noqa: E402

# 練習のノートブック自体はテストとして集めません（採点は hidden/ の隠しテストが行います）。
collect_ignore_glob = ["*.ipynb"]


def pytest_addoption(parser):
    grader.pytest_addoption(parser)


def pytest_configure(config):
    grader.configure(config)
