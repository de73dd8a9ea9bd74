"""採点を章ごとの子プロセスで行う仕組み（``grader.py`` から使います）。

親の pytest は隠しテストを集めるだけで、読者のコードを 1 行も実行しません。章の最初のテストに
来たら ``os.fork()`` で子プロセスを作り、子が解答セルを実行してから、その章のテストを順に
実行して、結果（pytest のレポート）をパイプで親に送ります。親は時間を測り、

* テストが制限時間を過ぎたら子を SIGKILL で止め、そのテストを不合格にして、残りのテストを
  新しい子プロセス（解答セルを実行し直します）で続けます。
* 解答セルの読み込みが止まったら、そのセルを飛ばして読み込み直します。
* 子が ``os._exit``・segfault などで終わったら、そのとき実行していたテストを不合格にします。

子は親から作ったばかりの状態で始まるので、章どうしは状態（``np.seterr``・``os.chdir``・
差し替えた関数）を共有しません。子のメモリは ``RLIMIT_AS`` で制限します。
"""
import json
import os
import select
import signal
import time

from _pytest.reports import TestReport
from _pytest.runner import runtestprotocol

import grader

GiB = 1024 ** 3


def _send(fd, message):
    data = (json.dumps(message, ensure_ascii=True, default=repr) + "\n").encode()
    while data:
        data = data[os.write(fd, data):]


def _how_it_ended(status):
    """``os.waitpid`` の状態を日本語で説明します。"""
    if status is None:
        return "理由は分かりません"
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        if sig == signal.SIGSEGV:
            return "セグメンテーション違反（SIGSEGV）。C のレベルで異常終了しました"
        if sig == signal.SIGKILL:
            return "SIGKILL で強制終了されました。メモリを使い過ぎていませんか"
        return f"シグナル {name} で終了しました"
    if os.WIFEXITED(status):
        return (f"終了コード {os.WEXITSTATUS(status)} で終了しました。"
                "os._exit() などでプロセスを終わらせていませんか")
    return "理由は分かりません"


def _limit_memory():
    """子プロセスが使える仮想メモリを「いまの量 + MINI_DL_GRADER_MEMORY_GB（既定 3）」に制限します。"""
    try:
        import resource
        with open("/proc/self/statm") as f:
            current = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        limit = current + int(float(os.environ.get("MINI_DL_GRADER_MEMORY_GB", "3")) * GiB)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ImportError, OSError, ValueError):  # Linux 以外では制限しません
        pass


def _quiet_child(config):
    """子プロセスの標準入出力を /dev/null にし、pytest の出力の捕捉を子のものに取り替えます。"""
    import faulthandler
    import sys
    faulthandler.disable()
    capman = config.pluginmanager.getplugin("capturemanager")
    if capman is not None:
        capman._global_capturing = None  # 親と共有している一時ファイルには触れません
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    sys.stdin = open(os.devnull, encoding="utf-8")
    sys.stdout = sys.stderr = open(os.devnull, "w", encoding="utf-8")
    if capman is not None:
        capman.start_global_capturing()


class Worker:
    """親の側から見た、1 つの子プロセス（1 つの章の、残りのテスト）。"""

    def __init__(self, plugin, key, items, skip):
        self.key = key
        self.items = items
        self.index = {it.nodeid: j for j, it in enumerate(items)}
        self.buf = b""
        self.results = {}
        self.phase = ("boot", None, time.monotonic())
        self.fatal = None
        self.error = None
        self.status = None
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # 子プロセス
            try:
                os.close(read_fd)
                os.setsid()  # 端末の Ctrl-C は親だけが受け取ります
                _quiet_child(plugin.config)
                _limit_memory()
                plugin.child_main(key, items, skip, lambda m: _send(write_fd, m))
            except BaseException as exc:  # pytest.exit() など、テストの外まで出てきた例外
                try:
                    _send(write_fd, {"t": "error", "msg": f"テストの外まで例外が出てきました: {type(exc).__name__}: {exc}"[:500]})
                except BaseException:
                    pass
                os._exit(70)
            finally:
                os._exit(0)
        os.close(write_fd)
        self.pid, self.fd = pid, read_fd

    def kill(self):
        if self.pid is None:
            return
        for kill in (lambda: os.killpg(self.pid, signal.SIGKILL), lambda: os.kill(self.pid, signal.SIGKILL)):
            try:
                kill()
            except (ProcessLookupError, PermissionError):
                pass
        try:
            _, status = os.waitpid(self.pid, 0)
            self.status = self.status if self.status is not None else status
        except ChildProcessError:
            pass
        os.close(self.fd)
        self.pid = None

    def _reap(self):
        """パイプが閉じた子の終わり方を調べます（パイプだけ閉じて動き続ける子は止めます）。"""
        deadline = time.monotonic() + 1.0
        try:
            while time.monotonic() < deadline:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
                if pid:
                    self.status = status
                    return
                time.sleep(0.01)
            self.error = "採点の子プロセスが、親との連絡に使うパイプを閉じてしまいました（os.closerange など）"
            os.killpg(self.pid, signal.SIGKILL)
            _, self.status = os.waitpid(self.pid, 0)
        except (ChildProcessError, ProcessLookupError, PermissionError):
            pass

    def _handle(self, msg):
        now = time.monotonic()
        kind = msg["t"]
        if kind == "cell":
            self.phase = ("cell", (msg["n"], msg.get("ex")), now)
        elif kind == "loaded":
            self.phase = ("idle", None, now)
        elif kind == "start":
            self.phase = ("test", msg["j"], now)
        elif kind == "reports":
            self.results[msg["j"]] = msg["reports"]
            self.phase = ("idle", None, now)
        elif kind == "fatal":
            self.fatal = msg["msg"]
        elif kind == "error":
            self.error = msg["msg"]

    def wait_for(self, j, test_limit, cell_limit):
        """テスト ``j`` のレポートを待ちます。

        Returns:
            ``("reports", list)``、``("fatal", 理由)``、``("timeout", phase)``、``("died", phase)`` のどれか。
        """
        while j not in self.results:
            if self.fatal is not None:
                return "fatal", self.fatal
            kind, what, since = self.phase
            limit = cell_limit if kind in ("boot", "cell") else test_limit
            remaining = since + limit - time.monotonic()
            if remaining <= 0:
                return "timeout", self.phase
            ready, _, _ = select.select([self.fd], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(self.fd, 1 << 16)
            if not chunk:
                self._reap()
                self.pid = None
                os.close(self.fd)
                return "died", self.phase
            self.buf += chunk
            *lines, self.buf = self.buf.split(b"\n")
            for line in lines:
                try:
                    message = json.loads(line)
                except ValueError:  # 読者のコードがパイプに書いたもの
                    continue
                if isinstance(message, dict) and "t" in message:
                    self._handle(message)
        return "reports", self.results.pop(j)


class Runner:
    """親の pytest（または ``grade()``）の中で、子プロセスを作って結果を受け取る係。"""

    def __init__(self, plugin):
        self.plugin = plugin
        self.worker = None
        self.skip = {}      # 章 → {セル番号: 飛ばした理由}
        self.fatal = {}     # 章 → 読み込めない理由
        self.notes = []     # 採点結果に添える日本語の説明

    def close(self):
        if self.worker is not None:
            self.worker.kill()
            self.worker = None

    def _queue(self, item, key):
        items = item.session.items
        start = items.index(item) if item in items else 0
        queue = []
        for it in items[start:]:
            if self.plugin.group_of(it) != key:
                break
            queue.append(it)
        return queue or [item]

    def reports_for(self, item):
        """``item`` を子プロセスで実行し、親の pytest に渡すレポートの列を返します。"""
        key = self.plugin.group_of(item)
        if key in self.fatal:
            return self._failed(item, self.fatal[key])
        test_limit, cell_limit = grader.test_timeout(), grader.cell_timeout()
        for _ in range(200):
            w = self.worker
            if w is None or w.pid is None or w.key != key or item.nodeid not in w.index:
                self.close()
                w = self.worker = Worker(self.plugin, key, self._queue(item, key), dict(self.skip.get(key, {})))
            try:
                event, detail = w.wait_for(w.index[item.nodeid], test_limit, cell_limit)
            except BaseException:  # Ctrl-C でも子を残しません
                self.close()
                raise
            if event == "reports":
                reports = [self.plugin.config.hook.pytest_report_from_serializable(
                    config=self.plugin.config, data=d) for d in detail]
                for r in reports:  # JSON を通るとタプルがリストになるので戻します
                    if isinstance(r.longrepr, list):
                        r.longrepr = tuple(r.longrepr)
                return reports
            self.close()
            if event == "fatal":
                self.fatal[key] = detail
                return self._failed(item, detail)
            phase, what, _ = detail
            if phase == "cell":
                n, ex = what
                self._skip_cell(key, n, ex, event, cell_limit, w.status)
                continue
            if phase == "boot":
                self.fatal[key] = f"{key}: 採点の準備が {cell_limit:g} 秒以内に終わりませんでした。"
                return self._failed(item, self.fatal[key])
            header = grader.header_of(item)
            if event == "timeout":
                message = (f"{header}: {test_limit:g} 秒以内に終わりませんでした（採点を打ち切りました）。"
                           "無限ループになっていないか、重すぎる計算をしていないか確かめてください。")
            elif w.error:
                message = (f"{header}: 採点が途中で止まりました（{w.error}）。\n"
                           "  この練習は不合格とし、残りは新しいプロセスで採点を続けます。")
            else:
                message = (f"{header}: 採点中に Python のプロセスが終わってしまいました"
                           f"（{_how_it_ended(w.status)}）。\n"
                           "  この練習は不合格とし、残りは新しいプロセスで採点を続けます。")
            return self._failed(item, message)
        return self._failed(item, f"{key}: 読み込みを何度やり直しても終わりませんでした。")

    def _skip_cell(self, key, n, ex, event, cell_limit, status):
        if event == "timeout":
            why = f"{cell_limit:g} 秒以内に終わりませんでした"
        else:
            why = f"実行するとプロセスが終わってしまいました（{_how_it_ended(status)}）"
        if ex:
            reason = (f"練習 {ex} のセル（コードセル {n}）が{why}。関数の外（セルの一番外側）で"
                      "無限ループや重い計算をしていませんか。このセルを飛ばして採点しました。")
        else:
            reason = (f"コードセル {n}（練習のセルではありません）が{why}。このセルを飛ばして採点しました。"
                      "試してみるセルの重い計算は、小さくするかコメントにしてください。")
        self.skip.setdefault(key, {})[n] = reason
        self.notes.append(f"{key}: {reason}")

    def _failed(self, item, message):
        """子プロセスから結果が来なかったテストの、不合格のレポート。"""
        def report(when, outcome, longrepr=None):
            return TestReport(item.nodeid, item.location, {k: 1 for k in item.keywords}, outcome,
                              longrepr, when, [], 0.0)
        return [report("setup", "passed"), report("call", "failed", message), report("teardown", "passed")]


def child_main(plugin, key, items, skip, send):
    """子プロセスの本体: 解答を用意し、テストを順に実行してレポートを送ります。"""
    grader._in_worker = True
    try:
        plugin.prepare_answers(key, skip, send)
    except grader.ExerciseFailure as exc:
        send({"t": "fatal", "msg": str(exc)})
        return
    send({"t": "loaded"})
    config = plugin.config
    for j, item in enumerate(items):
        send({"t": "start", "j": j})
        nextitem = items[j + 1] if j + 1 < len(items) else None
        reports = runtestprotocol(item, log=False, nextitem=nextitem)
        send({"t": "reports", "j": j, "reports": [
            config.hook.pytest_report_to_serializable(config=config, report=r) for r in reports]})

