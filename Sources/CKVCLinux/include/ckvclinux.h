#ifndef KVC_CKVCLINUX_H
#define KVC_CKVCLINUX_H
/* The Linux calls the format module needs that Swift's Glibc module does not
 * declare (they need _GNU_SOURCE). Kept apart from CLinux, which is the
 * daemon's: the engine links the format module and nothing else. */

/* renameat2(RENAME_NOREPLACE): moves a name only where the target name does
 * not exist, atomically. Returns 0, or -1 with errno (EEXIST when taken). */
int kvc_rename_noreplace(int olddirfd, const char *oldpath, int newdirfd, const char *newpath);
#endif
