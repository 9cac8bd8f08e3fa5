/**
 * Starts a program so that the pager owns it from its first instruction:
 * the child stops itself before exec, we seize it with exec tracing, let it
 * exec, and hand it over stopped at the exec event.
 *
 * @module
 */

import {
  __WALL,
  Errno,
  kill,
  PTRACE,
  Signal,
  spawn,
  SYS,
  syscall,
  wait4,
  WUNTRACED,
} from "./libc.ts";

/**
 * Spawns `argv` (searched in PATH) and returns its pid, stopped at exec as a
 * tracee of ours. Throws with a one-line message if it cannot be started.
 */
export function spawnStoppedAtExec(argv: string[]): number {
  const pid = spawn(["/bin/sh", "-c", 'kill -STOP $$; exec "$@"', "remora-start", ...argv]);
  const status = new Int32Array(1);
  for (;;) {
    const r = wait4(pid, WUNTRACED, status);
    if (r === -Errno.EINTR) continue;
    if (r !== pid) throw new Error(`could not start ${argv[0]}: wait failed`);
    if ((status[0] & 0xff) === 0x7f) break;
    throw new Error(`could not start ${argv[0]}: the shell exited early`);
  }
  const s = syscall(SYS.ptrace, PTRACE.SEIZE, pid, 0, PTRACE.O_TRACEEXEC);
  if (s < 0) {
    kill(pid, Signal.SIGKILL);
    throw new Error(`could not trace the started program (ptrace: ${-s})`);
  }
  kill(pid, Signal.SIGCONT);
  for (;;) {
    const r = wait4(pid, __WALL, status);
    if (r === -Errno.EINTR) continue;
    if (r !== pid) throw new Error(`could not start ${argv[0]}`);
    const st = status[0];
    if ((st & 0xff) !== 0x7f) {
      throw new Error(`${argv[0]} exited before it started (is it in PATH and executable?)`);
    }
    if (st >> 8 === (Signal.SIGTRAP | (PTRACE.EVENT_EXEC << 8))) return pid;
    const sig = (st >> 8) & 0xff;
    // Group-stop reports and our own SIGSTOP/SIGCONT are not for the program.
    const deliver = (st >> 16) !== 0 || sig === Signal.SIGSTOP || sig === Signal.SIGTRAP ? 0 : sig;
    syscall(SYS.ptrace, PTRACE.CONT, pid, 0, deliver);
  }
}

/** Lets a spawned program go without paging it (used when attach fails). */
export function releaseSpawned(pid: number): void {
  syscall(SYS.ptrace, PTRACE.DETACH, pid, 0, 0);
}

/** Waits for our child `pid` to exit; returns a shell-style exit code (128+signal if killed). */
export function reapChild(pid: number): number {
  const status = new Int32Array(1);
  for (;;) {
    const r = wait4(pid, __WALL, status);
    if (r === -Errno.EINTR) continue;
    if (r !== pid) return 0;
    const st = status[0];
    if ((st & 0x7f) === 0) return (st >> 8) & 0xff;
    if ((st & 0xff) === 0x7f) continue;
    return 128 + (st & 0x7f);
  }
}
