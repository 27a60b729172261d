"""exec: a program per connection, as inetd, tcpserver, systemd ``Accept=yes`` and
``nc -e`` run them, with the EOF and exit rules spelled out (see ``session``).

* ``settings``: the options and the load-time checks (command, program, cwd, user);
* ``environment``: the program's environment (ucspi-tcp's names);
* ``process``: spawning (posix_spawn or Popen), pidfds, exit statuses, process groups;
* ``session``: one connection's program: socket-as-stdio or relay, EOF, exit, signals;
* ``pipes``: the relay's non-blocking pipes, with flow control;
* ``stderr``: a program's stderr as bounded log lines;
* ``handler``: the handler itself.
"""
