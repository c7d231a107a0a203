"""qefleet's sandbox launcher: apply resource limits, start a new session, drop root,
then exec the command. Usage: python launch.py CPU_S MEM_MB NPROC FSIZE_MB DROP -- CMD...
(DROP=1: when running as root, switch to the user nobody first.)

Runs inside a fresh network namespace when the host allows it (the Rust side wraps it in
`unshare --net`). Limits apply to the command and everything it starts.
"""
import os
import pwd
import resource
import sys


def main():
    sep = sys.argv.index("--")
    cpu, mem_mb, nproc, fsize_mb, drop = (int(v) for v in sys.argv[1:sep])
    command = sys.argv[sep + 1:]
    mib = 1024 * 1024
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
