//! The unwinder's maps: the chunks of rows, each process's mappings, each object's rows by
//! file.

use aya::maps::{ArrayOfMaps, HashMap as BpfHashMap, Map, MapData};
use profiler_common::{
    FileKey, MAX_UNWIND_CHUNKS, ObjectUnwind, ProcessUnwind, PythonProcess, UNWIND_CHUNK_ROWS,
    UNWIND_CHUNK_SHIFT, UnwindRow, UserStack,
};

use std::os::fd::AsFd as _;

use super::{
    error::{ProbeError, map_error},
    probes::{KernelProbes, insert_entry, read_hash_map_as, remove_keys},
};

/// A user stack drained from the kernel: its frames, and how its walk ended (a `stack_end`
/// value).
pub type WalkedStack = (Vec<u64>, u32);

impl KernelProbes {
    /// Writes rows of the unwind tables from row index `first`, all within its chunk, through
    /// a shared mapping of the chunk (one copy, however many rows); the chunk is made when
    /// it is the one after the last made.
    pub fn write_unwind_rows(&mut self, first: u32, rows: &[UnwindRow]) -> Result<(), ProbeError> {
        use std::os::fd::AsRawFd as _;

        let chunk = (first >> UNWIND_CHUNK_SHIFT) as usize;
        let offset = (first & (UNWIND_CHUNK_ROWS - 1)) as usize;
        if offset + rows.len() > UNWIND_CHUNK_ROWS as usize || chunk > self.unwind_chunks.len() {
            return Err(ProbeError::UnwindRows(format!(
                "rows {first}..{} are not within chunk {chunk} of {}",
                first as usize + rows.len(),
                self.unwind_chunks.len()
            )));
        }
        if chunk == self.unwind_chunks.len() {
            self.add_unwind_chunk()?;
        }
        let fd = self.unwind_chunks[chunk].fd().as_fd().as_raw_fd();
        let len = UNWIND_CHUNK_ROWS as usize * size_of::<UnwindRow>();
        // SAFETY: a fresh shared mapping of the chunk's memory, unmapped below; the kernel
        // programs read rows concurrently, but only rows the collector has not published yet
        // (no process mapping points at them) are written.
        unsafe {
            let memory = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            );
            if memory == libc::MAP_FAILED {
                return Err(ProbeError::UnwindRows(format!(
                    "mapping chunk {chunk} of the rows: {}",
                    std::io::Error::last_os_error()
                )));
            }
            let target = memory.cast::<UnwindRow>().add(offset);
            std::ptr::copy_nonoverlapping(rows.as_ptr(), target, rows.len());
            libc::munmap(memory, len);
        }
        Ok(())
    }

    /// Makes the next chunk of rows and gives it to the unwinder.
    fn add_unwind_chunk(&mut self) -> Result<(), ProbeError> {
        let index = self.unwind_chunks.len() as u32;
        let map = self
            .ebpf
            .map_mut("UNWIND_CHUNKS")
            .expect("UNWIND_CHUNKS is in the object");
        let chunk = make_chunk(index, map)?;
        self.unwind_chunks.push(chunk);
        Ok(())
    }

    /// Tells the unwinder the executable mappings of process `pid`.
    pub fn set_process_unwind(
        &mut self,
        pid: u32,
        process: &ProcessUnwind,
    ) -> Result<(), ProbeError> {
        insert_entry(&mut self.ebpf, "UNWIND_PROCESSES", pid, process)
    }

    /// The unwinder's description of process `pid`, if it has one.
    pub fn process_unwind(&self, pid: u32) -> Option<ProcessUnwind> {
        let processes: BpfHashMap<_, u32, ProcessUnwind> =
            BpfHashMap::try_from(self.ebpf.map("UNWIND_PROCESSES")?).ok()?;
        processes.get(&pid, 0).ok()
    }

    /// Tells the unwinder where the rows of the object in `file` are, for processes whose
    /// mappings it has not been told yet.
    pub fn set_object_unwind(
        &mut self,
        file: FileKey,
        object: &ObjectUnwind,
    ) -> Result<(), ProbeError> {
        insert_entry(&mut self.ebpf, "UNWIND_OBJECTS", file, object)
    }

    /// Tells the unwinder that process `pid` runs CPython, and how to find its frames.
    pub fn set_python_process(
        &mut self,
        pid: u32,
        process: &PythonProcess,
    ) -> Result<(), ProbeError> {
        insert_entry(&mut self.ebpf, "PYTHON_PROCESSES", pid, process)
    }

    /// Forgets the Python processes among `pids` (they exited or executed another program).
    pub fn remove_python_processes(&mut self, pids: &[u32]) -> Result<(), ProbeError> {
        remove_keys::<PythonProcess>(&mut self.ebpf, "PYTHON_PROCESSES", pids)
    }

    /// Drops the unwinding descriptions of processes that exited (the map is bounded).
    pub fn remove_process_unwind(&mut self, pids: &[u32]) -> Result<(), ProbeError> {
        remove_keys::<ProcessUnwind>(&mut self.ebpf, "UNWIND_PROCESSES", pids)
    }

    /// Takes the user stacks walked since the last call out of the kernel's map, which the
    /// kernel refills only with stacks it has not stored before: id, frames, how the walk
    /// ended (a `stack_end` value).
    pub fn drain_user_stacks(&mut self) -> Result<Vec<(u32, WalkedStack)>, ProbeError> {
        // Each copied out at its length as it is read: a whole `UserStack` is 4 KiB.
        read_hash_map_as(&mut self.ebpf, "USER_STACKS", true, |stack: UserStack| {
            let len = (stack.len as usize).min(stack.frames.len());
            (stack.frames[..len].to_vec(), stack.end)
        })
    }
}

/// Makes chunk `index` of rows (8 MiB of kernel memory) and gives it to the unwinder through
/// `chunks`, its `UNWIND_CHUNKS` map.
fn make_chunk(index: u32, chunks: &mut Map) -> Result<MapData, ProbeError> {
    use aya_obj::generated::{BPF_F_MMAPABLE, bpf_map_type::BPF_MAP_TYPE_ARRAY};

    if index >= MAX_UNWIND_CHUNKS {
        return Err(ProbeError::UnwindRows(format!(
            "all {MAX_UNWIND_CHUNKS} chunks of rows are in use"
        )));
    }
    // The same definition as the object's inner map: the kernel accepts no other.
    let definition = aya_obj::Map::new_from_params(
        BPF_MAP_TYPE_ARRAY as u32,
        size_of::<u32>() as u32,
        size_of::<UnwindRow>() as u32,
        UNWIND_CHUNK_ROWS,
        BPF_F_MMAPABLE,
    );
    let chunk = MapData::create(definition, "unwind_rows", None)
        .map_err(|err| ProbeError::UnwindRows(format!("making chunk {index}: {err}")))?;
    let mut chunks: ArrayOfMaps<&mut MapData, MapData> =
        ArrayOfMaps::try_from(chunks).map_err(map_error("UNWIND_CHUNKS"))?;
    chunks
        .set(index, &chunk, 0)
        .map_err(map_error("UNWIND_CHUNKS"))?;
    Ok(chunk)
}

/// Makes the first chunk of rows on another thread, through a descriptor of its own on
/// `UNWIND_CHUNKS`, while the programs are verified.
pub(super) fn spawn_first_chunk(
    ebpf: &aya::Ebpf,
) -> Result<std::thread::JoinHandle<Result<MapData, ProbeError>>, ProbeError> {
    let Some(Map::ArrayOfMaps(chunks)) = ebpf.map("UNWIND_CHUNKS") else {
        unreachable!("UNWIND_CHUNKS is an array of maps in the object");
    };
    let fd = chunks
        .fd()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|err| ProbeError::UnwindRows(format!("duplicating UNWIND_CHUNKS: {err}")))?;
    Ok(std::thread::spawn(move || {
        let chunks = MapData::from_fd(fd).map_err(map_error("UNWIND_CHUNKS"))?;
        let mut chunks = Map::from_map_data(chunks).map_err(map_error("UNWIND_CHUNKS"))?;
        make_chunk(0, &mut chunks)
    }))
}
