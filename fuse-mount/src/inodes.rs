//! The commit's tree as an inode table, read once at mount time.
//!
//! Inode numbers follow a depth-first walk in name order, so they are the same at every mount of
//! the same commit; the entries of a hardlink group share the first one's inode. Every file
//! object is read here too (its size is part of `stat`), once per distinct content.

use std::collections::HashMap;
use std::sync::Arc;

use osdeploy_store::object::{Commit, DirTree, EntryKind, FileObject, Meta, ObjectKind};
use osdeploy_store::{FileId, Repo, TreeId};
use osdeploy_transport::staging::Staging;

/// Where the tree's metadata objects are read from.
pub trait Metadata {
    /// A dirtree object.
    fn tree(&self, id: &TreeId) -> osdeploy_store::Result<DirTree>;
    /// A file object.
    fn file_object(&self, id: &FileId) -> osdeploy_store::Result<FileObject>;
}

/// A local repository.
impl Metadata for Repo {
    fn tree(&self, id: &TreeId) -> osdeploy_store::Result<DirTree> {
        Repo::tree(self, id)
    }

    fn file_object(&self, id: &FileId) -> osdeploy_store::Result<FileObject> {
        Repo::file_object(self, id)
    }
}

/// A remote commit's metadata, fetched (and verified) into a staging area.
impl Metadata for Staging {
    fn tree(&self, id: &TreeId) -> osdeploy_store::Result<DirTree> {
        DirTree::decode(id.0, &self.get(ObjectKind::DirTree, &id.0)?)
    }

    fn file_object(&self, id: &FileId) -> osdeploy_store::Result<FileObject> {
        FileObject::decode(id.0, &self.get(ObjectKind::File, &id.0)?)
    }
}

/// The root directory's inode number (FUSE's).
pub const ROOT: u64 = 1;

/// A file's content as the mount reads it.
#[derive(Debug)]
pub struct FileContent {
    /// Its id (names its object in a bare repository).
    pub id: FileId,
    /// Its size and chunks.
    pub object: FileObject,
    /// Where each chunk starts in the file.
    pub starts: Vec<u64>,
}

/// What an inode is.
#[derive(Debug)]
pub enum Body {
    /// A directory: its entries, sorted by name (bytewise), with their inodes.
    Dir(Vec<(Vec<u8>, u64)>),
    /// A regular file.
    File(Arc<FileContent>),
    /// A symbolic link's target.
    Symlink(Vec<u8>),
    /// A character device's number.
    CharDevice(u64),
    /// A block device's number.
    BlockDevice(u64),
    /// A named pipe.
    Fifo,
    /// A unix socket node.
    Socket,
}

/// One inode.
#[derive(Debug)]
pub struct Node {
    /// The directory it was first found in (the root's is the root).
    pub parent: u64,
    /// Mode bits, owner, time, xattrs.
    pub meta: Meta,
    /// Hard links: names for a file, 2 plus subdirectories for a directory.
    pub nlink: u32,
    /// Its type and payload.
    pub body: Body,
}

impl Node {
    /// Its size as `stat` gives it.
    pub fn size(&self) -> u64 {
        match &self.body {
            Body::File(content) => content.object.size,
            Body::Symlink(target) => target.len() as u64,
            Body::Dir(entries) => 4096 * (1 + entries.len() as u64 / 128),
            _ => 0,
        }
    }
}

/// Every inode of a commit, indexed by inode number - 1.
#[derive(Debug)]
pub struct Inodes {
    nodes: Vec<Node>,
    bytes: u64,
}

impl Inodes {
    /// Reads the commit's tree and file objects.
    pub fn build(repo: &impl Metadata, commit: &Commit) -> osdeploy_store::Result<Inodes> {
        let root = Node { parent: ROOT, meta: commit.root_meta.clone(), nlink: 2, body: Body::Dir(Vec::new()) };
        let mut inodes = Inodes { nodes: vec![root], bytes: 0 };
        let mut contents: HashMap<FileId, Arc<FileContent>> = HashMap::new();
        let mut hardlinks: HashMap<u32, u64> = HashMap::new();
        let mut pending: Vec<(TreeId, u64)> = vec![(commit.root, ROOT)];
        while let Some((tree, dir)) = pending.pop() {
            let mut entries = Vec::new();
            for entry in repo.tree(&tree)?.entries {
                let body = match entry.kind {
                    EntryKind::File { hardlink, .. } if hardlink != 0 && hardlinks.contains_key(&hardlink) => {
                        let ino = hardlinks[&hardlink];
                        inodes.node_mut(ino).nlink += 1;
                        entries.push((entry.name, ino));
                        continue;
                    }
                    EntryKind::File { file, .. } => {
                        let content = match contents.get(&file) {
                            Some(content) => content.clone(),
                            None => {
                                let object = repo.file_object(&file)?;
                                let starts = object
                                    .chunks
                                    .iter()
                                    .scan(0u64, |at, (_, len)| {
                                        let start = *at;
                                        *at += u64::from(*len);
                                        Some(start)
                                    })
                                    .collect();
                                let content = Arc::new(FileContent { id: file, object, starts });
                                contents.insert(file, content.clone());
                                content
                            }
                        };
                        inodes.bytes += content.object.size;
                        Body::File(content)
                    }
                    EntryKind::Dir(_) => Body::Dir(Vec::new()),
                    EntryKind::Symlink(ref target) => Body::Symlink(target.clone()),
                    EntryKind::CharDevice(dev) => Body::CharDevice(dev),
                    EntryKind::BlockDevice(dev) => Body::BlockDevice(dev),
                    EntryKind::Fifo => Body::Fifo,
                    EntryKind::Socket => Body::Socket,
                };
                let nlink = if matches!(body, Body::Dir(_)) { 2 } else { 1 };
                inodes.nodes.push(Node { parent: dir, meta: entry.meta, nlink, body });
                let ino = inodes.nodes.len() as u64;
                match entry.kind {
                    EntryKind::Dir(subtree) => {
                        inodes.node_mut(dir).nlink += 1;
                        pending.push((subtree, ino));
                    }
                    EntryKind::File { hardlink, .. } if hardlink != 0 => {
                        hardlinks.insert(hardlink, ino);
                    }
                    _ => {}
                }
                entries.push((entry.name, ino));
            }
            inodes.node_mut(dir).body = Body::Dir(entries);
        }
        Ok(inodes)
    }

    fn node_mut(&mut self, ino: u64) -> &mut Node {
        &mut self.nodes[ino as usize - 1]
    }

    /// The inode `ino`, if the commit has it.
    pub fn get(&self, ino: u64) -> Option<&Node> {
        ino.checked_sub(1).and_then(|i| self.nodes.get(i as usize))
    }

    /// The inode of `name` in directory `parent`.
    pub fn lookup(&self, parent: u64, name: &[u8]) -> Option<u64> {
        let Body::Dir(entries) = &self.get(parent)?.body else {
            return None;
        };
        entries.binary_search_by(|(n, _)| n.as_slice().cmp(name)).ok().map(|i| entries[i].1)
    }

    /// How many inodes the commit has.
    pub fn count(&self) -> usize {
        self.nodes.len()
    }

    /// The size of every file entry added up (a hardlinked file once).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}
