//go:build !windows

package fsutil

// CanSyncDir says whether a directory can be fsynced here (see the Windows
// version): SyncDir does it.
const CanSyncDir = true
