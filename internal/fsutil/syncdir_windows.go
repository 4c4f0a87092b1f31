package fsutil

// CanSyncDir is false on Windows: it has no fsync of a directory
// (FlushFileBuffers on a directory handle fails, access denied), so
// SyncDir and WithSync's SyncDir do nothing there, and a rename is as
// durable as NTFS's own journal makes it. The SDK's outbox is what runs on
// Windows; the broker does not.
const CanSyncDir = false
