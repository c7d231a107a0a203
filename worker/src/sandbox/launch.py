"""qefleet's sandbox launcher: apply resource limits, start a new session, drop root,
then exec the command.
Usage: python launch.py CPU_S MEM_MB NPROC FSIZE_MB DROP PRIVATE_TMP -- CMD...
(DROP=1: when running as root, switch to the user nobody first. PRIVATE_TMP=1: the Rust
side started this in a mount namespace; mount empty tmpfs over the shared temp dirs.)

Runs inside a fresh network namespace when the host allows it (the Rust side wraps it in
`unshare --net`). Limits apply to the command and everything it starts.
"""
import ctypes
import os
import pwd
import resource
import sys


MS_BIND = 4096
SHARED_TEMP_DIRS = ("/tmp", "/var/tmp", "/dev/shm")


def mount(libc, source, target, fstype, flags, data):
    if libc.mount(source.encode(), target.encode(), fstype and fstype.encode(), flags, data and data.encode()) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), target)


def under_temp(path):
    return any(path == d or path.startswith(d + "/") for d in SHARED_TEMP_DIRS)


def private_temp_dirs(size_mb, command):
    """Empty tmpfs over the shared temp dirs. What the run needs from them is bound back
    at its own path: the work dir (often under /tmp), and the interpreter's environment
    and the command's directory when they live there (a checkout in /tmp)."""
    libc = ctypes.CDLL(None, use_errno=True)
    work = os.getcwd()
    needed = []
    for path in (work, sys.prefix, os.path.dirname(os.path.abspath(command[0]))):
        path = os.path.realpath(path)
        if under_temp(path) and path not in (p for p, _ in needed):
            needed.append((path, os.open(path, os.O_RDONLY | os.O_DIRECTORY)))
    needed.sort()  # a parent before what lies inside it
    for d in SHARED_TEMP_DIRS:
        if os.path.isdir(d):
            mount(libc, "tmpfs", d, "tmpfs", 0, f"size={size_mb}m,mode=1777")
    for path, fd in needed:
        os.makedirs(path, exist_ok=True)
        mount(libc, f"/proc/self/fd/{fd}", path, None, MS_BIND, None)
        os.close(fd)
    os.chdir(work)


def main():
    sep = sys.argv.index("--")
    cpu, mem_mb, nproc, fsize_mb, drop, private_tmp = (int(v) for v in sys.argv[1:sep])
    command = sys.argv[sep + 1:]
    mib = 1024 * 1024
    if private_tmp:
        private_temp_dirs(fsize_mb, command)
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_AS, (mem_mb * mib, mem_mb * mib))
    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize_mb * mib, fsize_mb * mib))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    os.setsid()
    if drop and os.geteuid() == 0:
        # Root ignores RLIMIT_NPROC and may write anywhere: run as nobody instead.
        nobody = pwd.getpwnam("nobody")
        os.setgroups([])
        os.setgid(nobody.pw_gid)
        os.setuid(nobody.pw_uid)
        os.environ["HOME"] = os.getcwd()
    resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
    os.execvp(command[0], command)


main()
