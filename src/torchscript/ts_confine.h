/* ts_confine.h — decompd-ts-reader confines itself before it loads an
 * archive (ts_confine.c). */
#ifndef DECOMP_TS_CONFINE_H
#define DECOMP_TS_CONFINE_H

#include <stddef.h>

/* Forbid this process, for the rest of its life, to create, write, remove
 * or rename any file (descriptors already open stay usable), to read files
 * outside the system's library and kernel trees and `archive`, to use TCP,
 * and to signal processes outside itself — as far as the kernel's Landlock
 * supports (ABI 1: files; 4: TCP; 6: signals). Loading a TorchScript archive
 * runs its code, and TorchScript can write files (torch.save) and read them
 * (torch.from_file).
 *
 * Returns the Landlock ABI version applied (≥ 1), 0 when the kernel has no
 * Landlock (nothing is confined; `note` says so), or -1 on failure (`note`
 * says why). */
int ts_confine(const char *archive, char *note, size_t notelen);

#endif
