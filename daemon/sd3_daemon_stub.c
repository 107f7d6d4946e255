/* sd3_daemon_stub - keeps the sd3daemon library non-empty while daemon/ grows. */
int sd3_daemon_linked = 1;
