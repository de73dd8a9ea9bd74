"""``pytest exercises/`` で練習問題を採点するための設定（中身は grader.py にあります）。"""
import grader

# 練習のノートブック自体はテストとして集めません（採点は hidden/ の隠しテストが行います）。
collect_ignore_glob = ["*.ipynb"]


def pytest_addoption(parser):
    grader.pytest_addoption(parser)


def pytest_configure(config):
    grader.configure(config)
